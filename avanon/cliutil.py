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


def parse_gpus(text: str) -> list[int]:
    """`--gpus`: a list of CUDA device ids ("0,1,2,3"; "3," is device 3 alone) or a count ("4" means 0,1,2,3)."""
    parts = [x.strip() for x in text.split(",")]
    if len(parts) > 1 and parts[-1] == "":
        parts = parts[:-1]  # "3,": a one-device list, not a count
    elif len(parts) == 1:
        try:
            count = int(parts[0])
        except ValueError:
            raise argparse.ArgumentTypeError(f"--gpus expects device ids (0,1,2,3) or a count (4), got {text!r}") \
                from None
        if count < 1:
            raise argparse.ArgumentTypeError(f"--gpus {text}: a count must be at least 1 (device 0 alone: --gpus 0, "
                                             "or --gpus 1)")
        return list(range(count))
    ids = []
    for x in parts:
        if not x.isdigit():  # not an int, negative, empty ("0,,1"), a UUID or a MIG name
            raise argparse.ArgumentTypeError(f"--gpus {text}: {x!r} is not a device id (a non-negative integer)")
        ids.append(int(x))
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise argparse.ArgumentTypeError(f"--gpus {text}: device {', '.join(map(str, dupes))} given twice")
    return ids


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
