"""Progress reporting for long jobs: a live bar on a terminal, a few plain lines in a log.

``progress(total=n, desc="embed", unit="file")`` returns a tqdm bar when stderr is a terminal.
When it is not (CI, ``nohup``, ``> log``), a bar would write every refresh as a carriage-return
update, thousands of them per stage; instead :class:`LogProgress` prints one plain line every
``interval`` seconds (default 10, ``M3BERT_PROGRESS_INTERVAL`` overrides) and one at the end::

    embed: 120/800 file (15 %), 3.2 file/s, 3m32s left
    embed: done, 800 file in 4m10s (3.2 file/s)

Both accept the subset of tqdm's API the package uses: iteration, ``update``, ``set_postfix``,
``set_description``, ``close`` and use as a context manager.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

from tqdm.auto import tqdm

DEFAULT_INTERVAL_S = 10.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("M3BERT_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool = False, initial: int = 0, leave: bool = True,
             file: TextIO | None = None, **tqdm_kwargs: Any) -> Any:
    """A progress reporter: tqdm on a terminal, :class:`LogProgress` otherwise (see the module doc)."""
    stream = file if file is not None else sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if disable:
        return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream, silent=True)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream,
                    **tqdm_kwargs)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream, leave=leave)


class LogProgress:
    """Plain-line progress for non-terminals: a line every ``interval`` seconds and one at the end."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None, desc: str, unit: str,
                 initial: int = 0, file: TextIO, silent: bool = False, interval: float | None = None,
                 leave: bool = True) -> None:
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = int(initial)
        self.file = file
        self.silent = silent
        self.leave = leave  # False (an inner bar): no closing line, only interval lines of a long run
        self.interval = _interval() if interval is None else float(interval)
        self.postfix = ""
        self._start_n = self.n
        self._t0 = self._last = time.monotonic()
        self._closed = False

    # -- tqdm's API -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        for item in (() if self.iterable is None else self.iterable):
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if not self.silent and now - self._last >= self.interval:
            self._last = now
            self._write(self._line(now))

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.silent or not self.leave or self.n == self._start_n:
            return
        elapsed = time.monotonic() - self._t0
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        done = "done" if self.total is None or self.n >= self.total else f"stopped at {self.n}/{self.total}"
        self._write(f"{self.desc}: {done}, {self.n - self._start_n} {self.unit} in {_hms(elapsed)} "
                    f"({rate:.3g} {self.unit}/s){'; ' + self.postfix if self.postfix else ''}")

    # -- internals -----------------------------------------------------------------------------------
    def _line(self, now: float) -> str:
        elapsed = now - self._t0
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("nan")
            head = f"{self.n}/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f} %)"
            tail = f", {_hms(left)} left" if left == left else ""
        else:
            head, tail = f"{self.n} {self.unit}", ""
        post = f"; {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {head}, {rate:.3g} {self.unit}/s{tail}{post}"

    def _write(self, line: str) -> None:
        try:
            print(line, file=self.file, flush=True)
        except (OSError, ValueError):  # a closed or broken log stream never stops the job
            pass


def _hms(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{seconds:.1f}s")
