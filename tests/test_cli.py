"""The command line is a thin layer over the stages: every subcommand is listed and has a working --help, the
verbosity flags work before and after the command, and `avanon recipe` is wired in."""
import pytest

from adapter_fixtures import make_cityscapes
from avanon.cli import build_parser, main

COMMANDS = ("run", "anonymize", "inspect", "verify", "merge", "show", "train", "report", "regress", "weights",
            "recipe")


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out, command


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"usage: avanon {command}" in capsys.readouterr().out


def test_train_help_shows_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--config", "--out", "--resume", "--test-only", "--set", "--trainer"):
        assert option in out


def test_quiet_hides_the_summary_and_verbose_goes_after_the_command(tmp_path, capsys):
    root = tmp_path / "cs"
    make_cityscapes(root)
    base = ["anonymize", "--dataset", "cityscapes", "--root", str(root), "--region", "body", "--method", "mask_out",
            "--no-progress"]
    assert main(["-q", *base, "--out", str(tmp_path / "q")]) == 0
    assert "anonymized" not in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "v"), "-v"]) == 0
    assert "2 anonymized" in capsys.readouterr().out
    args = build_parser().parse_args(["run", "r.yaml", "-v", "-v"])
    assert args.verbose == 2


def test_recipe_show_prints_the_resolved_recipe(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("AVANON_CITYSCAPES_ROOT", str(tmp_path))
    assert main(["recipe", "show", "recipes/cityscapes_body_minsize32.yaml", "--set", "workers=3"]) == 0
    out = capsys.readouterr().out
    assert "min_size: 32" in out and "\nworkers: 3" in out and "\nbase:" not in out
