"""avanon.progress: a tqdm bar on a terminal, nothing under --no-progress or when stderr is a file / CI log; the
smoothed ETA; the bars of verify, inspect and synthetic data generation, and their --no-progress."""
import io
import logging
import sys

import pytest

from adapter_fixtures import make_cityscapes
from avanon.cli import build_parser, main
from avanon.progress import (ConsoleHandler, NullBar, SmoothedRate, bars_wanted, default_enabled, format_seconds,
                             logging_above_bars, progress)


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal (what a person running avanon has on stderr)."""

    def isatty(self):
        return True


class Pipe(io.StringIO):
    def isatty(self):
        return False


def test_disabled_or_not_a_terminal_is_a_silent_pass_through():
    for enabled, stream in ((False, FakeTTY()), (True, Pipe()), (True, io.StringIO()), (False, Pipe())):
        bar = progress([1, 2, 3], "x", enabled, file=stream)
        assert isinstance(bar, NullBar) and list(bar) == [1, 2, 3] and len(bar) == 3
        bar.update(2)
        bar.set_postfix_str("loss 1.0", refresh=False)
        bar.set_postfix(loss=1.0)
        bar.close()
        assert stream.getvalue() == ""
    counted = progress(5, "x", False, initial=2)
    assert isinstance(counted, NullBar) and counted.total == 5 and counted.n == 2 and list(counted) == []
    with progress(5, "x", False) as bar:
        bar.update(1)
    assert bar.n == 1


def test_enabled_on_a_terminal_is_a_tqdm_bar():
    from tqdm import tqdm

    stream = FakeTTY()
    bar = progress([1, 2, 3], "frames", True, file=stream, unit="img", mininterval=0)
    assert isinstance(bar, tqdm)
    assert list(bar) == [1, 2, 3]
    bar.close()
    text = stream.getvalue()
    assert "frames" in text and "3/3" in text and "img" in text
    counted = progress(4, "train", True, file=stream, initial=1)
    assert isinstance(counted, tqdm) and counted.total == 4 and counted.n == 1
    counted.close()


def test_default_stream_is_stderr_and_default_setting(monkeypatch):
    from tqdm import tqdm

    fake = FakeTTY()
    monkeypatch.setattr(sys, "stderr", fake)
    assert bars_wanted(True) and not bars_wanted(False)
    bar = progress(2, "x", True)
    assert isinstance(bar, tqdm)
    bar.close()
    assert "x" in fake.getvalue()
    assert bars_wanted(None)  # enabled unless someone turned the default off
    with default_enabled(False):
        assert not bars_wanted(None) and isinstance(progress(2, "x"), NullBar)
        assert bars_wanted(True)  # an explicit flag wins
    assert bars_wanted(None)
    monkeypatch.setattr(sys, "stderr", Pipe())
    assert not bars_wanted(True) and isinstance(progress(2, "x", True), NullBar)

    class NoIsatty:
        def write(self, _):
            pass

    assert not bars_wanted(True, NoIsatty())


def test_log_lines_go_above_the_bars_and_handlers_are_restored(monkeypatch):
    err, out = FakeTTY(), FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", out)
    logger = logging.getLogger("avanon.test_progress")
    handler = ConsoleHandler("stdout")  # what the command line installs: follows sys.stdout
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with logging_above_bars(True, logger="avanon.test_progress"):
            assert handler.stream is not out  # wrapped
            bar = progress(3, "work", True, mininterval=0)
            bar.update(1)
            logger.info("a line")
            bar.close()
        assert handler.stream is out
        assert "a line\n" in out.getvalue()
        monkeypatch.setattr(sys, "stdout", FakeTTY())  # stdout replaced later: the handler follows it
        assert handler.stream is sys.stdout
        with logging_above_bars(False, logger="avanon.test_progress"):
            assert handler.stream is sys.stdout  # --no-progress: untouched
    finally:
        logger.removeHandler(handler)


def test_smoothed_rate_skips_the_first_step_and_smooths():
    r = SmoothedRate(beta=0.9)
    assert r.value is None and r.eta(10) is None
    r.update(30.0)  # the first step of a start (worker start-up): the only estimate until there is another
    assert r.value == 30.0 and r.eta(10) == 300.0
    r.update(2.0)
    assert r.value == pytest.approx(2.0)  # bias-corrected: a plain mean of what was counted
    r.update(4.0)
    assert r.value == pytest.approx((0.9 * 0.1 * 2 + 0.1 * 4) / (0.9 * 0.1 + 0.1))
    steady = SmoothedRate(beta=0.9)
    for s in [9.0] + [1.0, 3.0] * 50:  # alternating step times: the estimate stays near the mean
        steady.update(s)
    assert 1.8 < steady.value < 2.2
    assert steady.eta(0) == 0 and steady.eta(-3) == 0


def test_format_seconds():
    assert format_seconds(None) == "?"
    assert format_seconds(0.4) == "0 s" and format_seconds(45) == "45 s"
    assert format_seconds(185) == "3 min 05 s"
    assert format_seconds(3725) == "1 h 02 min"


def test_synthetic_generation_shows_a_bar_on_a_terminal_only(tmp_path, monkeypatch):
    from dataset_adapters.synthetic import generate

    fake = FakeTTY()
    monkeypatch.setattr(sys, "stderr", fake)
    generate(tmp_path / "a", "coco", {"train": 2, "val": 1}, progress=True)
    assert "synthetic data" in fake.getvalue() and "/3 [" in fake.getvalue()
    fake.seek(0)
    fake.truncate()
    with default_enabled(False):  # what `avanon run --no-progress` sets around the adapters it builds
        generate(tmp_path / "b", "coco", {"train": 2, "val": 1})
    generate(tmp_path / "c", "coco", {"train": 2, "val": 1}, progress=False)
    assert fake.getvalue() == ""


def test_verify_and_inspect_accept_no_progress(tmp_path, monkeypatch, capsys):
    args = build_parser().parse_args(["verify", "m", "--no-progress"])
    assert args.no_progress
    assert not build_parser().parse_args(["verify", "m"]).no_progress
    args = build_parser().parse_args(["inspect", "--dataset", "cityscapes", "--root", "r", "--no-progress"])
    assert args.no_progress

    root = tmp_path / "cs"
    make_cityscapes(root)
    assert main(["anonymize", "--dataset", "cityscapes", "--root", str(root), "--region", "body", "--method",
                 "mask_out", "--out", str(tmp_path / "anon"), "--no-progress"]) == 0
    mirror = tmp_path / "anon" / "cityscapes" / "body_mask_out"
    inspect = ["inspect", "--dataset", "cityscapes", "--root", str(root), "--plot", str(tmp_path / "h.png")]
    for extra, bars in (([], True), (["--no-progress"], False)):
        fake = FakeTTY()
        monkeypatch.setattr(sys, "stderr", fake)
        capsys.readouterr()
        assert main(["verify", str(mirror), *extra]) == 0
        assert "CLEAN" in capsys.readouterr().out
        assert main([*inspect, *extra]) == 0
        assert "images" in capsys.readouterr().out
        err = fake.getvalue()  # bars that are gone when done (leave=False): the first frame shows 0/3
        assert (("verify body_mask_out" in err and "/3 [" in err and "inspect cityscapes" in err) if bars
                else err == "")
    # not a terminal (a CI log): line-based output only, even without --no-progress
    pipe = Pipe()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert main(["verify", str(mirror)]) == 0 and main(inspect) == 0
    assert pipe.getvalue() == ""
