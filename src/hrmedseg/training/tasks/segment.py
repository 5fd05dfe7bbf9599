"""Supervised segmentation: a registered model, ``images/`` + ``masks/`` (or 3-D cases), the
configured loss; validation Dice/IoU picks the best checkpoint, which is evaluated on the test
split at the end."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...metrics.tensor import logits_to_labels, per_image_dice_iou
from ..config import Config, ConfigError, resolve_workers
from ..distributed import all_reduce_sum
from ..engine import worker_init
from ..sampler import EpochBatchSampler, SeededDataset
from .base import Task


def build_model(cfg: Config) -> nn.Module:
    """The model ``cfg.model`` describes (registered name, shipped or given weights, or a
    distilled student folder whose encoder and neck go into a fresh model)."""
    from ...models._hub import from_pretrained
    from ...models._registry import create_model

    def _load_distilled(folder: str, name: str, kwargs: dict[str, Any]):
        """A distilled student folder (``hrmedseg distill`` → ``RUN/student``, config.json
        ``metadata.distilled = true``): its ``encoder.*`` and ``neck.*`` weights go into a freshly
        built ``name`` model with the configured classes/size/overrides; the decoder stays at its
        initialisation (distillation never trains it)."""
        from ...models._hub import WEIGHTS_NAME, load_safetensors

        model = create_model(name, pretrained=False, **kwargs)
        state = load_safetensors(Path(folder) / WEIGHTS_NAME)
        parts = ("encoder.", "neck.")
        own = {k: v for k, v in model.state_dict().items() if k.startswith(parts)}
        sub = {k: v for k, v in state.items() if k.startswith(parts)}
        if not own:
            raise ConfigError(f"model.pretrained={folder}: {name} has no encoder/neck to load a "
                              f"distilled encoder into")
        bad = [f"{k} {tuple(sub[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
               if k in sub and sub[k].shape != v.shape]
        missing = [k for k in own if k not in sub]
        extra = [k for k in sub if k not in own]
        if bad or missing or extra:
            what = (f"shape {bad[0]}" if bad else f"missing {missing[0]}" if missing
                    else f"unexpected {extra[0]}")
            raise ConfigError(f"model.pretrained={folder}: the distilled encoder does not fit "
                              f"{name} with these model.overrides ({len(bad)} shape mismatches, "
                              f"{len(missing)} missing, {len(extra)} unexpected keys; e.g. {what})")
        model.load_state_dict(sub, strict=False)
        model.pretrained_weight = str(folder)
        return model

    m = cfg.model
    pre = m.pretrained.strip()
    if pre.lower() in ("true", "false", "none", "default"):   # YAML may give True/False
        pre = pre.lower()
    # model.overrides win over what the model/data sections imply (a recipe may pin img_size)
    kwargs: dict[str, Any] = {"num_classes": m.num_classes, "in_chans": m.in_chans,
                              "img_size": tuple(cfg.data.size), **m.overrides}
    if pre and pre not in ("none", "default", "true", "false") and Path(pre).is_dir():
        from ...models._hub import read_config
        if (read_config(pre).get("metadata") or {}).get("distilled"):
            return _load_distilled(pre, m.name, kwargs)
        return from_pretrained(pre)
    flag: bool | str = False if pre in ("", "none", "false") else (True if pre in ("default", "true") else pre)
    if pre == "default":
        # The default recipe asks for the model's shipped default weight (for HRMedSeg the
        # distilled encoder) where there is one that fits the configured architecture; other
        # models, or a changed width/depth, start from their initialisation (said once).
        from ...models._hub import CheckpointError
        from ...models._pretrained import list_pretrained
        if not any(w.default for w in list_pretrained(m.name)):
            print(f"note: {m.name} ships no default pretrained weight; training from scratch",
                  file=sys.stderr)
            return create_model(m.name, pretrained=False, **kwargs)
        try:
            return create_model(m.name, pretrained=True, **kwargs)
        except CheckpointError as exc:
            print(f"note: {m.name}'s shipped pretrained weight does not fit model.overrides "
                  f"({str(exc).split(': ')[-1][:120]}); training from scratch", file=sys.stderr)
            return create_model(m.name, pretrained=False, **kwargs)
    return create_model(m.name, pretrained=flag, **kwargs)


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    from ...data.datasets import collate_segmentation
    return collate_segmentation(items)


class _TrainCollate:
    """Collate of the training loader (picklable for workers). It holds the device augmentation
    for the rare mixed batch of uint8 and float items, which is normalised in the worker: its
    uint8 items are augmented there, with the same parameters."""

    def __init__(self, augment: Any) -> None:
        self.augment = augment

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        from ...data.datasets import collate_segmentation
        return collate_segmentation(items, augment=self.augment)


class SegmentTask(Task):
    """``model``, ``loss_fn`` and the datasets may be given (tests, Python callers); otherwise
    they are built from the config (:func:`hrmedseg.training.run.build_model`, the loss
    registry, :func:`hrmedseg.training.data_setup.build_datasets`)."""

    name = "segment"
    monitor, mode = "val_dice", "max"
    loss_fields = {"total": "train_loss"}

    def __init__(self, cfg: Config, model: nn.Module | None = None, loss_fn: nn.Module | None = None,
                 train_set: Dataset | None = None, val_set: Dataset | None = None,
                 preprocess: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self._given = (model, loss_fn, train_set, val_set)
        self.preprocess = preprocess or {}
        self.data: Any = None
        self.workers = resolve_workers(cfg.data.workers)
        self._train_loader: DataLoader | None = None

    # -- building ---------------------------------------------------------------------------
    def setup(self, engine: Any) -> None:
        from ..distributed import barrier
        from ..losses import build_loss
        super().setup(engine)
        cfg, info = self.cfg, engine.info
        from ..data_setup import DeviceAugmentSplit, augment_on_device, build_datasets
        model, loss_fn, train_set, val_set = self._given
        if model is None:
            model = build_model(cfg)
        on_device = augment_on_device(cfg, engine.device.type)
        if train_set is None:
            nc, ch = int(model.config.num_classes), int(model.config.in_chans)
            # Rank 0 builds the pre-resize cache first; the others then open the finished cache.
            data = build_datasets(cfg, nc, ch, device_augment=on_device) if info.is_main else None
            barrier(info)
            self.data = data or build_datasets(cfg, nc, ch, device_augment=on_device)
            train_set, val_set = self.data.train, self.data.val
            self.preprocess = self.data.preprocess
        if loss_fn is None:
            try:
                loss_fn = build_loss(cfg.loss.name, int(model.config.num_classes), **cfg.loss.kwargs)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"loss: {exc}") from None
        self.loss_fn, self.train_set, self.val_set = loss_fn, train_set, val_set
        # Batched augmentation on the device (data.augment_device): the workers only decode and
        # resize, the batch moves as uint8 and is augmented there (see _inputs) by the training
        # transform's own BatchAugment, so both paths share one policy and size.
        tf = getattr(train_set, "transform", None)
        self.augment = tf.augment.augment if isinstance(tf, DeviceAugmentSplit) else None
        self.device = engine.device
        self.model = model.to(self.device)
        # Parameters a model declares unused (e.g. SAM leftovers of the released HRMedSeg layout)
        # never receive gradients; freezing them keeps DDP's reducer and Adam's state exact.
        unused = set(getattr(self.model, "unused_parameter_names", lambda: [])())
        for name, p in self.model.named_parameters():
            if name in unused:
                p.requires_grad_(False)
        self.apply_grad_checkpointing(cfg, self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self.model
        self.sync_bn = False
        if info.enabled:
            has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
            # SyncBatchNorm runs on CUDA only; on CPU (gloo) BN statistics stay per process.
            if has_bn and self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                self.net = self.model
                self.sync_bn = True
            # Gradients as views into the all-reduce buckets: no copy into the buckets after
            # backward and one gradient-sized buffer less.
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True)
        self.net = self.compile_net(self.net, cfg, self.device)
        if self.workers > 0:
            from ...data.io import opencv_fork_safe
            opencv_fork_safe()
        self.sampler = EpochBatchSampler(len(self.train_set), cfg.train.batch_size, info.rank,  # type: ignore[arg-type]
                                         info.world_size, shuffle=True, seed=cfg.train.seed)

    # -- batches ----------------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch()

    def train_batches(self, epoch: int, start: int) -> DataLoader:
        # One loader for the whole run: its workers persist across epochs (a short epoch would
        # otherwise spend seconds restarting them). The epoch reaches the workers through the
        # sampler's (index, epoch) keys, so augmentation stays seeded per sample and epoch.
        self.sampler.set_epoch(epoch, start)
        if self._train_loader is None:
            w = self.workers
            self._train_loader = DataLoader(
                SeededDataset(self.train_set, self.cfg.train.seed, carry_seed=self.augment is not None),
                batch_sampler=self.sampler, num_workers=w, collate_fn=_TrainCollate(self.augment),
                worker_init_fn=worker_init if w > 0 else None,
                pin_memory=self.device.type == "cuda", persistent_workers=w > 0,
                prefetch_factor=4 if w > 0 else None,
                # Own generator: creating an iterator must not draw from the global RNG, or a
                # resumed run's dropout/drop-path draws would shift.
                generator=torch.Generator().manual_seed(self.cfg.train.seed))
        return self._train_loader

    def batch_images(self, batch: dict[str, Any]) -> int:
        return int(batch["image"].shape[0])

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch to device; uint8 images are normalised there (cheaper than in the workers), and
        a batch that carries ``aug_seed`` is augmented there first, batched, with the parameters
        the per-item path draws from the same seeds."""
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["mask"].to(self.device, non_blocking=True)
        if not batch.get("normalized", True):
            from ...data.gpu_normalize import normalize_batch, normalize_unit_batch
            mode = batch.get("normalization") or self.cfg.data.normalize
            seeds = batch.get("aug_seed")
            if seeds is not None and self.augment is not None:
                params = self.augment.draw_items(seeds.tolist())
                x, y = self.augment.apply(x, y, params, keep_float=True)
                x = normalize_unit_batch(x, mode)
            else:
                x = normalize_batch(x, mode)
        y = y.long()
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x, y = self._inputs(batch)
        with self.engine.autocast():
            logits = self.net(x)
        return {"total": self.loss_fn(logits.float(), y)}

    # -- validation -------------------------------------------------------------------------
    def has_validation(self) -> bool:
        return self.val_set is not None

    def val_fields(self) -> list[str]:
        return ["val_loss", "val_dice", "val_iou"]

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val_set is None or len(self.val_set) == 0:  # type: ignore[arg-type]
            return {}
        info = self.engine.info
        num_classes = int(self.model.config.num_classes)
        idx = list(range(info.rank, len(self.val_set), info.world_size))  # type: ignore[arg-type]
        bs = max(1, self.cfg.train.batch_size // info.world_size)
        loader = DataLoader(torch.utils.data.Subset(self.val_set, idx), batch_size=bs,
                            num_workers=self.workers, collate_fn=_collate,
                            generator=torch.Generator().manual_seed(self.cfg.train.seed))
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, dice, iou, count
        for batch in loader:
            x, y = self._inputs(batch)
            with self.engine.autocast():
                logits = self.model(x)
            logits = logits.float()
            loss = self.loss_fn(logits, y)
            dice, iou = per_image_dice_iou(logits_to_labels(logits), y, num_classes)
            n = x.shape[0]
            sums += torch.tensor([float(loss) * n, dice.mean(1).sum().item(), iou.mean(1).sum().item(), n],
                                 dtype=torch.float64, device=self.device)
        sums = all_reduce_sum(sums, info)
        n = max(1.0, sums[3].item())
        return {"val_loss": sums[0].item() / n, "val_dice": sums[1].item() / n,
                "val_iou": sums[2].item() / n}

    # -- run files --------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"preprocess": self.preprocess}

    def fingerprint(self) -> dict[str, Any]:
        return {"train_samples": len(self.train_set)}  # type: ignore[arg-type]

    def run_info(self) -> dict[str, Any]:
        return {"sync_batchnorm": self.sync_bn,
                "train_samples": len(self.train_set),  # type: ignore[arg-type]
                "val_samples": len(self.val_set) if self.val_set is not None else 0}  # type: ignore[arg-type]

    def prepare(self, resumed: bool) -> None:
        self._write_splits()

    def _write_splits(self) -> None:
        """``RUN/splits.json``: the train/val/test stems this run drew, so that ``evaluate``
        and ``predict`` on the run find its test split without a splits file in the data."""
        if self.data is None or not self.engine.info.is_main:
            return
        from ...atomic import write_json_atomic
        parts: dict[str, list[str]] = {}
        for key, ds in (("train", self.data.train), ("val", self.data.val), ("test", self.data.test)):
            samples = getattr(ds, "samples", None) if ds is not None else []
            if samples is None:
                return           # 3-D slice datasets: split by case elsewhere
            parts[key] = [s.stem for s in samples]
        path = Path(self.cfg.train.out_dir) / "splits.json"
        write_json_atomic(path, {**parts, "data_root": str(Path(self.cfg.data.root).resolve())}, indent=1)

    # -- after fit --------------------------------------------------------------------------
    def finish(self, result: Any) -> dict[str, Any]:
        """Test-split evaluation of the best checkpoint (main process)."""
        from ...evaluation.evaluate import evaluate_samples, format_summary
        from ...inference.segmenter import Segmenter
        from ...models._hub import from_pretrained
        from ..checkpoint import find_checkpoint
        cfg = self.cfg
        finished = result.epochs_done >= cfg.train.epochs
        # A run cut short by its time limit is still evaluated (its summary says how far it
        # got); one stopped by max_steps is a partial run on purpose and is not.
        timed_out = result.stop_reason == "time_limit"
        test = getattr(self.data, "test", None)
        if not (self.engine.info.is_main and (finished or timed_out) and cfg.train.eval_test
                and test is not None):
            return {}
        ckpts = Path(cfg.train.out_dir) / "checkpoints"
        best = find_checkpoint(ckpts, "best") or find_checkpoint(ckpts, "last")
        seg = Segmenter(from_pretrained(best), device=str(self.device), size=cfg.data.size,
                        normalize=cfg.data.normalize, precision=cfg.train.precision,
                        batch_size=max(1, cfg.train.batch_size // 2))
        res = evaluate_samples(seg, test.samples, out_dir=Path(cfg.train.out_dir) / "test",
                               overlays=6, class_names=self.data.class_names, progress=True)
        print(format_summary(res, "model_resolution"), file=sys.stderr)
        print(format_summary(res, "original_resolution"), file=sys.stderr)
        return {"test": {k: {m: v["mean"] for m, v in res[k].items() if "/" not in m}
                         for k in ("model_resolution", "original_resolution")}}

    def close(self) -> None:
        self._train_loader = None   # ends persistent workers
