"""DataLoader workers are forked: OpenCV's thread pool in the parent must not make them hang.

Regression tests for a hang seen on the lent H100: the pre-resize cache was built with threads
(OpenCV's pool came up in the parent), then every forked worker waited forever in its first
OpenCV call (the worker initialiser's ``cv2.setNumThreads(1)``). Each check runs in a fresh
interpreter, so what earlier tests did with OpenCV cannot hide or cause the problem.
"""
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("cv2")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork start method")

CHILD_CHECK = """
import multiprocessing as mp, numpy as np, cv2
from concurrent.futures import ThreadPoolExecutor
{parent_setup}
cv2.setNumThreads(4)
{before_threads}
big = np.random.rand(2048, 2048, 3).astype(np.float32)
with ThreadPoolExecutor(4) as pool:                      # like build_cache
    list(pool.map(lambda _: cv2.resize(big, (512, 512)), range(8)))

def child(q):
    {child_init}
    q.put(cv2.resize(np.zeros((2048, 2048, 3), np.uint8), (1024, 1024)).shape)

ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,))
p.start(); p.join(20)
if p.is_alive():
    p.kill(); raise SystemExit("child hung")
assert q.get(timeout=5) == (1024, 1024, 3)
print("ok")
"""


def _run(**parts) -> subprocess.CompletedProcess:
    code = CHILD_CHECK.format(**{"parent_setup": "", "before_threads": "", **parts})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=90)


def test_worker_initialiser_survives_a_parent_opencv_pool():
    r = _run(parent_setup="from hrmedseg.training.engine import worker_init as _worker_init",
             child_init="_worker_init(0)")
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def test_parent_side_guard_lets_even_a_threaded_child_call_through():
    r = _run(parent_setup="from hrmedseg.data.io import opencv_fork_safe",
             before_threads="opencv_fork_safe()", child_init="cv2.setNumThreads(1)")
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
