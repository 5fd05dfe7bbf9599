"""Progress reporting that suits where the output goes.

On a terminal it is a tqdm bar; when stderr is redirected to a file or a pipe (batch jobs, CI,
``nohup``) carriage-return frames would pile up there, so it prints plain lines instead: one
every ``interval_s`` seconds or every ``step_pct`` percent, whichever comes first, and a final
line with the total time.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """The subset of tqdm's interface the package uses, printed as periodic plain lines."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it", file: TextIO | None = None,
                 interval_s: float = 10.0, step_pct: float = 10.0, disable: bool = False,
                 clock: Any = time.monotonic, initial: int = 0) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.file = file if file is not None else sys.stderr
        self.interval_s, self.step_pct, self.disable = interval_s, step_pct, disable
        self._clock = clock
        self.n = self._initial = initial   # a resumed epoch starts at the batch it stopped at
        self._postfix = ""
        self._start = self._last_t = clock()
        self._last_pct = 0.0
        self._closed = False

    # tqdm-compatible surface
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("PlainProgress made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = s

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def write(self, s: str, file: TextIO | None = None, end: str = "\n") -> None:
        print(s, end=end, file=file if file is not None else sys.stdout, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = self._clock()
        pct = 100.0 * self.n / self.total if self.total else 0.0
        if now - self._last_t >= self.interval_s or (self.total and pct - self._last_pct >= self.step_pct
                                                     and self.n < self.total):
            self._emit(now)
            self._last_t, self._last_pct = now, pct

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.n:
            self._emit(self._clock(), final=True)

    def _emit(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = (self.n - self._initial) / elapsed
        parts = [f"{self.desc}: " if self.desc else "", f"{self.n}"]
        if self.total:
            parts.append(f"/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%)")
        else:
            parts.append(f" {self.unit}")
        parts.append(f", {rate:.3g} {self.unit}/s")
        if final:
            parts.append(f", done in {elapsed:.1f} s")
        elif self.total and rate > 0 and self.n < self.total:
            parts.append(f", about {(self.total - self.n) / rate:.0f} s left")
        if self._postfix:
            parts.append(f" [{self._postfix}]")
        print("".join(parts), file=self.file, flush=True)


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool = False, file: TextIO | None = None,
             interval_s: float = 10.0, step_pct: float = 10.0, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`PlainProgress`.

    Use it like tqdm: ``for x in progress(items, desc="predict", unit="img"): ...`` or
    ``with progress(total=n) as bar: bar.update(k)``; ``bar.write(msg)`` prints a line without
    breaking the bar.
    """
    stream = file if file is not None else sys.stderr
    if _is_tty(stream):
        from tqdm.auto import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=stream,
                    **tqdm_kwargs)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, file=stream,
                         interval_s=interval_s, step_pct=step_pct, disable=disable,
                         initial=int(tqdm_kwargs.get("initial", 0)))
