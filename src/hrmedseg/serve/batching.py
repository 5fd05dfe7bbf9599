"""Dynamic batching: requests that arrive together share one forward pass.

Requests are put on a bounded ``asyncio.Queue`` (full -> :class:`QueueFull`, which the API answers
with 503 + Retry-After). A collector coroutine takes the first waiting job, waits at most
``batch_wait_ms`` for up to ``max_batch - 1`` more, and hands the batch to ONE worker thread that
runs ``Segmenter.predict_arrays`` (box-prompted jobs run ``SamPredictor.predict_boxes`` one by one). Only
one batch runs at a time, so the next batch fills while the model is busy. Each request waits at
most ``timeout_s`` (-> :class:`asyncio.TimeoutError`); a job whose caller has gone is skipped.
If a batch fails, its jobs are retried one by one so a bad job fails alone.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import HrmedsegError


class QueueFull(HrmedsegError, RuntimeError):
    """The request queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"server busy: request queue is full, retry in {retry_after} s")


@dataclass
class Job:
    image: np.ndarray
    boxes: list[list[float]] | None = None
    future: asyncio.Future | None = None
    cancelled: bool = False
    enqueued: float = field(default_factory=time.perf_counter)
    batch_size: int = 0
    result: Any = None


def _labels_for_boxes(segmenter: Any, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """Box-prompted mask at the original size with ``SamPredictor.predict_boxes`` (SAM convention:
    RGB 0-255 input, boxes (x0, y0, x1, y1) in original pixels)."""
    import torch
    from ..data.io import to_model_channels
    from ..inference.predictor import SamPredictor

    model = segmenter.model
    rgb = to_model_channels(image, 3) * np.float32(255.0)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(segmenter.device)
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    thr = float(getattr(getattr(model, "config", None), "mask_threshold", 0.0))
    with torch.inference_mode(), segmenter._autocast():
        logits = SamPredictor(model).predict_boxes(x, [b]).float()
    return (logits[0, 0] > thr).to(torch.uint8).cpu().numpy()


def run_jobs(segmenter: Any, jobs: Sequence[Job]) -> list[Any]:
    """Labels (or the exception) for each job; runs in the worker thread."""
    out: list[Any] = [None] * len(jobs)
    plain = [i for i, j in enumerate(jobs) if j.boxes is None]
    if plain:
        try:
            preds = segmenter.predict_arrays([jobs[i].image for i in plain])
            for i, p in zip(plain, preds):
                out[i] = p.labels
        except Exception:  # noqa: BLE001 - retry one by one so a bad job fails alone
            for i in plain:
                try:
                    out[i] = segmenter.predict_arrays([jobs[i].image])[0].labels
                except Exception as exc:  # noqa: BLE001
                    out[i] = exc
    for i, j in enumerate(jobs):
        if j.boxes is not None:
            try:
                out[i] = _labels_for_boxes(segmenter, j.image, j.boxes)
            except Exception as exc:  # noqa: BLE001
                out[i] = exc
    return out


class DynamicBatcher:
    def __init__(self, segmenter: Any, *, max_batch: int = 8, batch_wait_ms: float = 10.0,
                 queue_size: int = 64, timeout_s: float = 60.0) -> None:
        if max_batch < 1 or queue_size < 1 or timeout_s <= 0 or batch_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1, timeout_s > 0, batch_wait_ms >= 0")
        self.segmenter = segmenter
        self.max_batch = int(max_batch)
        self.batch_wait = float(batch_wait_ms) / 1000.0
        self.queue_size = int(queue_size)
        self.timeout_s = float(timeout_s)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hrmedseg-infer")
        self._lock = threading.Lock()
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self.stats = {"requests": 0, "batches": 0, "max_batch_seen": 0, "rejected": 0, "timeouts": 0}
        self._busy_s = 0.0

    # -- lifecycle ----------------------------------------------------------------------------
    def _ensure_running(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue = asyncio.Queue(maxsize=self.queue_size)
            self._task = loop.create_task(self._collect())
        assert self._queue is not None
        return self._queue

    async def start(self) -> None:
        self._ensure_running()

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._task = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def retry_after(self) -> int:
        per_batch = self._busy_s / max(self.stats["batches"], 1)
        return max(1, int(per_batch * (self.queued / self.max_batch + 1) + 0.999))

    # -- API ----------------------------------------------------------------------------------
    async def submit(self, image: np.ndarray, boxes: list[list[float]] | None = None) -> Job:
        """Queue one image and wait for its labels (``job.result``). Raises QueueFull,
        asyncio.TimeoutError, or the exception the model raised for this image."""
        queue = self._ensure_running()
        job = Job(image, boxes, asyncio.get_running_loop().create_future())
        try:
            queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats["rejected"] += 1
            raise QueueFull(self.retry_after()) from None
        self.stats["requests"] += 1
        try:
            job.result = await asyncio.wait_for(job.future, self.timeout_s)
        except asyncio.TimeoutError:
            job.cancelled = True
            self.stats["timeouts"] += 1
            raise
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        return job

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        assert queue is not None
        while True:
            first = await queue.get()
            batch = [first]
            deadline = loop.time() + self.batch_wait
            while len(batch) < self.max_batch:
                left = deadline - loop.time()
                try:
                    batch.append(queue.get_nowait() if left <= 0 else await asyncio.wait_for(queue.get(), left))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            batch = [j for j in batch if not j.cancelled and not j.future.done()]
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, run_jobs, self.segmenter, batch)
            except Exception as exc:  # noqa: BLE001 - executor failure: fail this batch only
                results = [exc] * len(batch)
            self._busy_s += time.perf_counter() - t0
            self.stats["batches"] += 1
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(batch))
            for job, res in zip(batch, results):
                job.batch_size = len(batch)
                if job.future.done():
                    continue
                if isinstance(res, BaseException):
                    job.future.set_exception(res)
                else:
                    job.future.set_result(res)
