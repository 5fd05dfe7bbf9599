"""DataLoader workers are forked: OpenCV's thread pool in the parent must not make them hang.

Regression test for a hang seen on the lent H100: the pre-resize cache was built with threads
(OpenCV's pool came up in the parent), then every forked worker waited forever in its first
OpenCV call. ``opencv_fork_safe`` turns the pool off before workers are forked.
"""
import multiprocessing as mp
import sys

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")


def _child(q):
    import cv2 as c
    c.setNumThreads(1)   # what the worker initialiser used to do: hung without the fix
    out = c.resize(np.zeros((2048, 2048, 3), np.uint8), (1024, 1024), interpolation=c.INTER_AREA)
    q.put(out.shape)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_child_can_use_opencv_after_parent_used_its_pool():
    from hrmedseg.data.io import opencv_fork_safe
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        opencv_fork_safe()   # what build_datasets/Trainer do before any cache thread runs
        from concurrent.futures import ThreadPoolExecutor
        big = np.random.rand(2048, 2048, 3).astype(np.float32)
        with ThreadPoolExecutor(4) as pool:   # like build_cache
            list(pool.map(lambda _: cv2.resize(big, (512, 512)), range(8)))
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(q,))
        p.start()
        p.join(30)
        alive = p.is_alive()
        if alive:
            p.kill()
        assert not alive, "forked child hung in its first OpenCV call"
        assert q.get(timeout=5) == (1024, 1024, 3)
    finally:
        cv2.setNumThreads(before)
