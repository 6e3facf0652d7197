"""Progress for a person at a terminal, plain lines for a log: the one helper every long loop of avanon uses.

``progress(iterable_or_total, desc, enabled)`` is a tqdm bar on stderr when progress is enabled and stderr is a
terminal; otherwise (``--no-progress``, output redirected to a file or a CI log) it is a no-op with the same
methods, and what a log reader sees are the periodic lines the code logs anyway (training every ``log_period``
iterations, one line per study run, the closing summary).

``logging_above_bars()`` lets log lines and bars share a terminal: while it is active the "avanon" logger's
console handlers write through tqdm, which lifts the bars for each line and redraws them below it.

``SmoothedRate`` smooths seconds per step for an ETA that does not swing with each step (an exponential moving
average, bias-corrected so that the first steps are a plain mean, after skipping the first step of a start:
worker start-up, lazy initialisation); ``format_seconds`` prints a duration for people.

A leaf: the standard library and tqdm only.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterator, Optional

_DEFAULT = {"enabled": True}


def bars_wanted(enabled: Optional[bool] = None, stream=None) -> bool:
    """True when a bar should be drawn: progress enabled (None: the default set by `default_enabled`) and the
    stream (default sys.stderr) a terminal."""
    if enabled is None:
        enabled = _DEFAULT["enabled"]
    if not enabled:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


@contextlib.contextmanager
def default_enabled(enabled: bool) -> Iterator[None]:
    """What `progress(..., enabled=None)` does inside the block: for code that is not passed the command line's
    flag (dataset generation inside an adapter's constructor)."""
    before = _DEFAULT["enabled"]
    _DEFAULT["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _DEFAULT["enabled"] = before


class NullBar:
    """The bar when there is none: iterates what it wraps, counts `n`; drawing methods do nothing."""

    disable = True

    def __init__(self, iterable=None, total: Optional[int] = None, initial: int = 0):
        self.iterable, self.total, self.n = iterable, total, initial

    def __iter__(self):
        return iter(self.iterable if self.iterable is not None else ())

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def update(self, n: int = 1) -> None:
        self.n += n

    def _nothing(self, *args, **kwargs) -> None:
        return None

    close = refresh = clear = set_postfix = set_postfix_str = set_description = set_description_str = _nothing


def progress(iterable_or_total: Any = None, desc: str = "", enabled: Optional[bool] = None, *,
             total: Optional[int] = None, unit: str = "it", leave: bool = False, file=None, **tqdm_kwargs):
    """A tqdm bar over an iterable (or of `total` steps, when given an int) on `file` (default sys.stderr) when
    `enabled` (None: the `default_enabled` setting) and that stream is a terminal; else a `NullBar`. Extra keyword
    arguments go to tqdm (initial, smoothing, position...)."""
    iterable = iterable_or_total
    if isinstance(iterable_or_total, int) and not isinstance(iterable_or_total, bool):
        iterable, total = None, iterable_or_total
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    stream = sys.stderr if file is None else file
    if bars_wanted(enabled, stream):
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
        else:
            return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream, dynamic_ncols=True,
                        **tqdm_kwargs)
    return NullBar(iterable, total, int(tqdm_kwargs.get("initial", 0)))


class _AboveBars:
    """A console stream whose writes go above the bars (tqdm clears them, writes, redraws them)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str):
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.stream):
            return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


class ConsoleHandler(logging.StreamHandler):
    """A handler that writes to whatever sys.stdout / sys.stderr is when a record is emitted, not to the stream of
    the moment it was made (a command's output redirected later, a test capturing it, a closed pipe replaced)."""

    def __init__(self, which: str):
        self._which, self.override = which, None
        super().__init__()

    @property
    def stream(self):
        return self.override if self.override is not None else getattr(sys, self._which)

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the current sys stream is used instead
        pass


@contextlib.contextmanager
def logging_above_bars(enabled: Optional[bool] = True, logger: str = "avanon") -> Iterator[None]:
    """While active (and bars are wanted), log lines of `logger`'s console handlers (stdout / stderr) are written
    above the progress bars instead of through them; a no-op otherwise."""
    swapped = []
    if bars_wanted(enabled):
        for h in logging.getLogger(logger).handlers:
            if isinstance(h, ConsoleHandler):
                h.override = _AboveBars(h.stream)
                swapped.append(h)
    try:
        yield
    finally:
        for h in swapped:
            h.override = None


class SmoothedRate:
    """Seconds per step for an ETA: a bias-corrected exponential moving average (weight `beta` per step, so about
    the last 1 / (1 - beta) steps count), which skips the first `skip` steps of a start unless nothing else has
    been seen."""

    def __init__(self, beta: float = 0.98, skip: int = 1):
        self.beta, self.skip = beta, skip
        self._avg, self._weight, self._seen, self._skipped = 0.0, 0.0, 0, 0.0

    def update(self, seconds: float) -> None:
        self._seen += 1
        if self._seen <= self.skip:
            self._skipped += seconds
            return
        self._avg = self.beta * self._avg + (1 - self.beta) * seconds
        self._weight = self.beta * self._weight + (1 - self.beta)

    @property
    def value(self) -> Optional[float]:
        """Smoothed seconds per step; None before the first step."""
        if self._weight > 0:
            return self._avg / self._weight
        return self._skipped / self._seen if self._seen else None

    def eta(self, remaining: int) -> Optional[float]:
        v = self.value
        return None if v is None else v * max(0, remaining)


def format_seconds(seconds: Optional[float]) -> str:
    """``45 s``, ``3 min 05 s``, ``1 h 02 min``; ``?`` for None."""
    if seconds is None:
        return "?"
    s = int(round(max(0.0, float(seconds))))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"
