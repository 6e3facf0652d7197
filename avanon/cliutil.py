"""Small argument helpers shared by the stages' commands (each stage adds its own subcommands to `avanon`)."""
from __future__ import annotations

import argparse
import io
import os
from typing import Optional


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard expects k/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= k < n):
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= k < N")
    return k, n


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def kv_list(items: Optional[list[str]], flag: str) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"avanon: {flag} {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


class PipeSafe(io.TextIOBase):
    """stdout/stderr that survive a reader that went away (`avanon verify M | head -1`): once the pipe is closed,
    output goes to /dev/null and the work goes on to its normal end (manifests compacted, exit code kept)."""

    def __init__(self, stream):
        self._stream = stream
        self._closed_pipe = False

    def write(self, text):
        if not self._closed_pipe:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._to_devnull()
        return len(text)

    def flush(self):
        if not self._closed_pipe:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._to_devnull()

    def _to_devnull(self):
        self._closed_pipe = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # the interpreter's final flush must not fail either
        except (OSError, ValueError):
            pass

    def isatty(self):
        return not self._closed_pipe and self._stream.isatty()

    def fileno(self):
        return self._stream.fileno()

    @property
    def encoding(self):
        return self._stream.encoding
