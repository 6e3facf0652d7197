"""The study's closing summary (table, paths, contact-sheet command), its "run k of N" lines, "nothing to do" on
a finished study, and the resume checkpoint: dropped once a run is finished, kept with study.keep_checkpoints
and for an interrupted run. The runner is driven by a fake trainer (no torch training)."""
import json
import logging
from pathlib import Path

import pytest

from avanon.cli import main
from avanon.recipe import load_recipe
from avanon.study.runner import drop_checkpoint, run_study, study_summary
from avanon.study.training.trainers import TRAINERS

DEMO = Path(__file__).parent.parent / "recipes" / "demo.yaml"
MINUS = "\u2212"
AP_PERSON = {"original": 35.0, "face_blur": 34.8, "body_mask_out": 0.6}  # seed 0; seed 1 adds 0.4


def _rows(region, method, mirror, values, metrics=("AP", "AP_person")):
    return [{"dataset": "synthetic", "task": "instance_segmentation", "model": "mask_rcnn_r18_fpn_small",
             "depth": 18, "region": region, "method": method, "variant": "", "mirror": mirror, "seed": seed,
             "metrics": dict(zip(metrics, v)), "paper_table": None} for seed, v in enumerate(values)]


def test_summary_has_the_ap_person_rows_the_paths_and_the_show_command(tmp_path):
    rows = (_rows("none", "original", "original", [(36.6, 35.0), (36.8, 35.4)])
            + _rows("face", "blur", "face_blur", [(36.4, 34.8), (36.6, 35.0)])
            + _rows("body", "mask_out", "body_mask_out", [(31.0, 0.6), (31.4, 1.0)]))
    sdir = tmp_path / "study"
    sdir.mkdir()
    (sdir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = {"markdown": sdir / "report" / "report.md", "delta_png": sdir / "report" / "delta.png"}
    mirrors = [Path("out/demo/synthetic/face_blur"), Path("out/demo/synthetic/body_mask_out"),
               Path("out/demo/synthetic/face_blur"), tmp_path / "with space"]
    text = study_summary(sdir, paths, mirrors, metrics=["AP", "AP_person"])
    lines = text.splitlines()
    assert "6 runs" in lines[0] and "mean ± se over 2 seeds" in lines[0]
    header = next(line for line in lines if "region" in line)
    assert header.split() == ["region", "method", "AP_person", "AP"]  # AP_person first

    def row(region, method):
        return next(line for line in lines if line.split()[:2] == [region, method])

    # mean ± se over the seeds and Δ vs the Original, by hand: se = std(ddof=1) / sqrt(2)
    assert "35.2 ± 0.2" in row("none", "original") and "36.7 ± 0.1" in row("none", "original")
    assert "(" not in row("none", "original")
    assert f"34.9 ± 0.1 ({MINUS}0.3)" in row("face", "blur")
    assert f"0.8 ± 0.2 ({MINUS}34.4)" in row("body", "mask_out")
    assert f"31.2 ± 0.2 ({MINUS}5.5)" in row("body", "mask_out")
    assert row("body", "mask_out").index("0.8 ±") < row("body", "mask_out").index("31.2 ±")
    assert f"report: {paths['markdown']}" in text and f"Δ plot: {paths['delta_png']}" in text
    show = next(line for line in lines if "avanon show" in line)
    assert show.endswith(f"avanon show out/demo/synthetic/face_blur out/demo/synthetic/body_mask_out "
                         f"'{tmp_path / 'with space'}'")


def test_summary_without_ap_person_shows_the_metrics_there_are(tmp_path):
    rows = (_rows("none", "original", "original", [(50.0, 60.0)], metrics=("box_AP", "kp_AP"))
            + _rows("body", "blur", "body_blur", [(40.0, 30.0)], metrics=("box_AP", "kp_AP")))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = study_summary(tmp_path, {}, [])
    assert "over 1 seed " in text and "avanon show" not in text and "report:" not in text
    header = next(line for line in text.splitlines() if "region" in line)
    assert header.split() == ["region", "method", "box_AP", "kp_AP"]
    assert f"40.0 ± – ({MINUS}10.0)" in text and f"30.0 ± – ({MINUS}30.0)" in text


# ------------------------------------------------------------------------------------------- the runner


class Interrupted(Exception):
    pass


@pytest.fixture
def fake_trainer(monkeypatch):
    """A trainer registered as "fake": writes checkpoint.pth first (as the engine does every checkpoint_period),
    then model_final.pth and metrics.json; `interrupt` names (mirror, seed) runs that die after the checkpoint."""
    calls, interrupt = [], set()

    def fake(config, out_dir, *, resume=False, test_only=False, progress=False):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name, seed = out.parent.name, int(config["seed"])
        calls.append({"run": (name, seed), "resume": resume, "test_only": test_only, "progress": progress})
        (out / "checkpoint.pth").write_bytes(b"c" * 3000)
        if (name, seed) in interrupt:
            raise Interrupted(name)
        (out / "model_final.pth").write_bytes(b"m" * 1000)
        ap_person = AP_PERSON[name] + 0.4 * seed
        (out / "metrics.json").write_text(json.dumps({
            "paper": {"AP": 30 + ap_person / 10, "AP50": 50 + ap_person / 10, "AP_person": ap_person},
            "coco": {"bbox": {"AP_person": ap_person + 1}}}))
        return {"event": "end"}

    monkeypatch.setitem(TRAINERS._items, "fake", fake)
    fake.calls, fake.interrupt = calls, interrupt
    return fake


@pytest.fixture
def study_lines():
    """Messages of the "avanon.study" logger (the summary is logged there)."""
    class Lines(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    logger = logging.getLogger("avanon.study")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _recipe(tmp_path, *extra):
    sets = [f"dataset.root={tmp_path / 'data'}", f"output.root={tmp_path / 'out'}", "study.trainer=fake",
            "study.mirrors=[face_blur, body_mask_out]", "study.seeds=[0, 1]", *extra]
    recipe = load_recipe(DEMO, sets)
    mirrors = [(e, tmp_path / "out" / "synthetic" / e["name"]) for e in recipe["anonymize"]]
    return recipe, mirrors


def _runs(tmp_path):
    return tmp_path / "out" / "synthetic" / "study" / "demo" / "runs"


def test_checkpoints_go_once_runs_finish_and_an_interrupted_run_resumes(tmp_path, fake_trainer, study_lines):
    recipe, mirrors = _recipe(tmp_path)
    fake_trainer.interrupt.add(("body_mask_out", 0))
    with pytest.raises(Interrupted):
        run_study(recipe, mirrors, progress_print=study_lines.append)
    runs = _runs(tmp_path)
    assert [c["run"] for c in fake_trainer.calls] == [("original", 0), ("original", 1), ("face_blur", 0),
                                                      ("face_blur", 1), ("body_mask_out", 0)]
    for done in ("original/seed0", "original/seed1", "face_blur/seed0", "face_blur/seed1"):
        assert not (runs / done / "checkpoint.pth").exists()  # finished: results.jsonl + metrics.json
        assert (runs / done / "model_final.pth").is_file() and (runs / done / "metrics.json").is_file()
    assert (runs / "body_mask_out/seed0/checkpoint.pth").is_file()  # unfinished: kept, to resume from
    assert any(line.startswith("study run 5 of 6: body_mask_out seed 0: training") for line in study_lines)

    fake_trainer.interrupt.clear()
    fake_trainer.calls.clear()
    study_lines.clear()
    run_study(recipe, mirrors, progress_print=study_lines.append, progress=True)
    assert fake_trainer.calls == [
        {"run": ("body_mask_out", 0), "resume": True, "test_only": False, "progress": True},
        {"run": ("body_mask_out", 1), "resume": False, "test_only": False, "progress": True}]
    assert not list(runs.rglob("checkpoint.pth"))
    assert sum("done earlier" in line for line in study_lines) == 4
    assert any(line.startswith("study run 6 of 6: body_mask_out seed 1: AP ") for line in study_lines)
    summary = study_lines[-1]
    assert summary.startswith("study done: 6 runs") and "avanon show" in summary
    assert f"0.8 ± 0.2 ({MINUS}34.4)" in summary  # AP_person of body_mask_out over seeds 0 and 1


def test_keep_checkpoints_keeps_them(tmp_path, fake_trainer, study_lines):
    recipe, mirrors = _recipe(tmp_path, "study.keep_checkpoints=true", "study.mirrors=[body_mask_out]",
                              "study.seeds=[0]")
    run_study(recipe, mirrors, progress_print=study_lines.append)
    assert sorted(p.parent.name for p in _runs(tmp_path).rglob("checkpoint.pth")) == ["seed0", "seed0"]
    assert not any("removed" in line for line in study_lines)
    # turned off later: the leftovers of finished runs go on the next run, which has nothing else to do
    recipe, mirrors = _recipe(tmp_path, "study.mirrors=[body_mask_out]", "study.seeds=[0]")
    fake_trainer.calls.clear()
    run_study(recipe, mirrors, progress_print=study_lines.append)
    assert fake_trainer.calls == [] and not list(_runs(tmp_path).rglob("checkpoint.pth"))
    assert any(line.startswith("study: removed 2 resume checkpoints") for line in study_lines)


def test_drop_checkpoint_only_for_finished_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pth").write_bytes(b"x" * 10)
    assert drop_checkpoint(run) == 0  # no model_final.pth / metrics.json: an unfinished run
    (run / "model_final.pth").write_bytes(b"m")
    assert drop_checkpoint(run) == 0 and (run / "checkpoint.pth").is_file()
    (run / "metrics.json").write_text("{}")
    assert drop_checkpoint(run) == 10 and not (run / "checkpoint.pth").exists()
    assert drop_checkpoint(run) == 0


def test_a_second_run_with_nothing_left_says_nothing_to_do(tmp_path, fake_trainer, capsys):
    args = ["run", str(DEMO), "--no-progress", "--only", "body_mask_out",
            "--set", f"dataset.root={tmp_path / 'data'}", "--set", f"output.root={tmp_path / 'out'}",
            "--set", "dataset.options.num_train=2", "--set", "dataset.options.num_val=1",
            "--set", "study.trainer=fake", "--set", "study.mirrors=[body_mask_out]", "--set", "study.seeds=[0]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "study run 1 of 2: original seed 0: training" in out and "study run 2 of 2: body_mask_out seed 0" in out
    assert "study done: 2 runs" in out and "report: " in out and "report.md" in out and "delta.png" in out
    assert f"avanon show {tmp_path / 'out' / 'synthetic' / 'body_mask_out'}" in out
    assert "demo: finished in " in out.splitlines()[-1]
    assert not list(_runs(tmp_path).rglob("checkpoint.pth"))
    fake_trainer.calls.clear()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert fake_trainer.calls == []
    assert "study: nothing to do; 2 runs done earlier" in out
    assert ": training ->" not in out and ": done earlier" not in out  # no per-run lines
    assert "study done: 2 runs" in out and "demo: finished in " in out
