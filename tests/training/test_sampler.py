import pytest

from hrmedseg.training.sampler import EpochBatchSampler


def _global_batches(world, epoch, start=0, n=23, g=4):
    per_rank = [EpochBatchSampler(n, g, r, world, seed=3) for r in range(world)]
    for s in per_rank:
        s.set_epoch(epoch, start)
    its = [iter(s) for s in per_rank]
    out = []
    for parts in zip(*its):
        out.append([i for p in parts for i, _ in p])
    return out


def test_same_global_batches_for_any_world_size():
    one = _global_batches(1, epoch=2)
    assert one == _global_batches(2, epoch=2) == _global_batches(4, epoch=2)
    assert len(one) == 23 // 4 and len({i for b in one for i in b}) == 20


def test_resume_skips_exactly_and_epochs_differ():
    full = _global_batches(1, epoch=1)
    assert _global_batches(2, epoch=1, start=3) == full[3:]
    assert _global_batches(1, epoch=0) != full


def test_errors():
    with pytest.raises(ValueError, match="not divisible"):
        EpochBatchSampler(10, 3, 0, 2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochBatchSampler(3, 4)
