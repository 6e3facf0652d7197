"""`avanon regress`: the gate on Δ vs Original against a baseline written from results."""
import json
import math

import pytest

from avanon.study.cli import regress_main as main
from pathlib import Path

from avanon.study.regress import (BaselineError, DEFAULT_FLOOR, baseline_dict, compare, parse_tolerance,
                                  read_baseline, write_baseline)

SEG = ("AP", "AP_person")


def run(region, method, seeds_values, variant="", depth=50, metrics=SEG):
    return [{"dataset": "cityscapes", "task": "instance_segmentation", "model": f"mask_rcnn_r{depth}_fpn",
             "depth": depth, "region": region, "method": method, "variant": variant,
             "mirror": "original" if method == "original" else f"{region}_{method}", "seed": seed,
             "metrics": dict(zip(metrics, values)), "paper_table": None}
            for seed, values in enumerate(seeds_values)]


def study(shift=0.0, drop=()):
    """Original, face blur, body mask_out (two seeds, as the CPU demo); body mask_out moved by `shift`."""
    rows = (run("none", "original", [(36.6, 34.9), (36.8, 35.1)])
            + run("face", "blur", [(36.3, 34.8), (36.5, 35.0)])
            + run("body", "mask_out", [(31.1 + shift, 0.6), (31.3 + shift, 0.8)]))
    return [r for r in rows if r["method"] not in drop]


def write(tmp_path, name, rows):
    d = tmp_path / name
    d.mkdir()
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture
def base(tmp_path):
    return write_baseline(write(tmp_path, "base_run", study()), tmp_path / "baseline.json")


def test_baseline_schema(base):
    data = json.loads(base.read_text())
    assert data["format"] == "avanon-regress-baseline" and data["version"] == 1
    assert data["source"].endswith("results.jsonl")
    assert len(data["rows"]) == 6                                       # 3 runs x 2 metrics
    row = next(r for r in data["rows"] if r["method"] == "mask_out" and r["metric"] == "AP")
    assert row["dataset"] == "cityscapes" and row["depth"] == 50 and row["variant"] == "" and row["n"] == 2
    assert row["delta"] == pytest.approx(31.2 - 36.7)
    # se of each mean: std(ddof=1)/sqrt(2) = 0.1414/1.414 = 0.1; se(Δ) = sqrt(0.1² + 0.1²)
    assert row["se"] == pytest.approx(0.1) and row["delta_se"] == pytest.approx(math.sqrt(0.02), abs=1e-6)
    orig = next(r for r in data["rows"] if r["method"] == "original" and r["metric"] == "AP")
    assert orig["delta"] == 0 and orig["delta_se"] == 0
    assert read_baseline(base)["rows"] == data["rows"]


def test_passes_on_the_results_it_was_built_from(tmp_path, base):
    rep = compare(tmp_path / "base_run", base)
    assert rep.ok and rep.exit_code == 0
    assert set(rep.table["status"]) == {"pass"} and len(rep.table) == 6
    assert (rep.table["diff"].abs() < 1e-6).all()
    # the .jsonl path works as well as the run directory
    assert compare(tmp_path / "base_run" / "results.jsonl", base).ok
    assert "regress: PASS" in rep.format()


def test_tolerance_formula(tmp_path, base):
    rep = compare(write(tmp_path, "now", study(shift=0.5)), base, k=3.0, floor=0.0)
    row = rep.table.set_index(["method", "metric"]).loc[("mask_out", "AP")]
    se = math.sqrt(0.02)                                                # se(Δ) now and in the baseline
    assert row["diff"] == pytest.approx(0.5)
    assert row["tolerance"] == pytest.approx(3.0 * math.sqrt(se ** 2 + se ** 2), abs=1e-5)  # 3·0.2; JSON 1e-6
    assert row["status"] == "pass"
    assert compare(tmp_path / "now", base, k=2.0, floor=0.0).failed_keys() == [
        "cityscapes/instance_segmentation/mask_rcnn_r50_fpn/R-50 body/mask_out AP"]   # 2·0.2 = 0.4 < 0.5


def test_tampered_baseline_fails_naming_the_row(tmp_path, base):
    data = json.loads(base.read_text())
    row = next(r for r in data["rows"] if r["method"] == "mask_out" and r["metric"] == "AP_person")
    row["delta"] += 2.5                                                 # tolerance is max(1.0, 3·0.2) = 1.0
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    rep = compare(tmp_path / "base_run", tampered)
    assert not rep.ok and rep.exit_code == 1
    assert rep.failed_keys() == ["cityscapes/instance_segmentation/mask_rcnn_r50_fpn/R-50 body/mask_out AP_person"]
    text = rep.format()
    assert "FAILED (1):" in text and "body/mask_out AP_person" in text and "regress: FAIL" in text
    assert text.count("pass") == 5                                      # every row is printed with its status


def test_missing_row_fails_and_extra_row_passes(tmp_path, base):
    rep = compare(write(tmp_path, "missing", study(drop=("blur",))), base)
    assert not rep.ok
    missing = rep.table[rep.table["status"] == "MISSING"]
    assert list(missing["method"]) == ["blur", "blur"] and missing["failed"].all()
    extra_rows = study() + run("body", "blur", [(31.4, 2.1), (31.6, 2.3)])
    rep = compare(write(tmp_path, "extra", extra_rows), base)
    assert rep.ok
    assert list(rep.table[rep.table["status"] == "EXTRA"]["method"]) == ["blur", "blur"]


def test_floor_is_respected(tmp_path, base):
    now = write(tmp_path, "now", study(shift=-0.8))                     # k·se = 0.6 < 0.8
    assert compare(now, base).ok                                        # default floor 1.0 covers it
    assert DEFAULT_FLOOR == 1.0
    assert not compare(now, base, floor=0.7).ok
    assert compare(now, base, floor=0.8).ok                             # |ΔΔ| == tolerance passes
    assert not compare(write(tmp_path, "now2", study(shift=-1.2)), base).ok


def test_no_original_in_results_fails_as_na(tmp_path, base):
    with pytest.warns(UserWarning, match="no Original"):
        rep = compare(write(tmp_path, "noorig", study(drop=("original",))), base)
    assert not rep.ok
    assert set(rep.table[rep.table["method"] == "original"]["status"]) == {"MISSING"}
    assert set(rep.table[rep.table["method"] != "original"]["status"]) == {"N/A"}


def test_bad_baselines(tmp_path):
    with pytest.raises(BaselineError, match="no such baseline"):
        read_baseline(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text('{"rows": []}')
    with pytest.raises(BaselineError, match="not an avanon-regress-baseline"):
        read_baseline(tmp_path / "x.json")
    data = baseline_dict(write(tmp_path, "r", study()))
    del data["rows"][2]["delta_se"]
    with pytest.raises(BaselineError, match=r"rows\[2\] lacks delta_se"):
        read_baseline(data)
    with pytest.warns(UserWarning), pytest.raises(BaselineError, match="no Original"):
        write_baseline(write(tmp_path, "r2", study(drop=("original",))), tmp_path / "b.json")


def test_cli_exit_codes(tmp_path, capsys):
    run_dir = write(tmp_path, "run", study())
    b = tmp_path / "ci" / "baseline.json"
    assert main([str(run_dir), "--baseline", str(b), "--write-baseline"]) == 0
    assert b.is_file()
    assert main([str(run_dir), "--baseline", str(b)]) == 0
    shifted = write(tmp_path, "shifted", study(shift=-1.5))
    assert main([str(shifted), "--baseline", str(b), "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "body/mask_out AP" in out
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False
    assert main([str(shifted), "--baseline", str(b), "--tolerance-floor", "2"]) == 0
    assert main([str(tmp_path / "none"), "--baseline", str(b)]) == 2


def _demo_results(tmp_path) -> Path:
    """results.jsonl reproducing the committed demo baseline: two seeds per (region, method) at mean ± se."""
    base = json.loads((Path(__file__).parent.parent / "benchmarks/baselines/demo.json").read_text())
    runs: dict = {}
    for r in base["rows"]:
        key = (r["region"], r["method"])
        for i, sign in enumerate((1, -1)):
            runs.setdefault((key, i), {"dataset": r["dataset"], "task": r["task"], "model": r["model"],
                                       "depth": r["depth"], "region": r["region"], "method": r["method"],
                                       "variant": r["variant"], "seed": i, "metrics": {}})
            runs[(key, i)]["metrics"][r["metric"]] = r["mean"] + sign * r["se"]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in runs.values()))
    return path


def test_demo_gate_is_tight_enough_to_catch_a_halved_effect(tmp_path):
    """The demo is deterministic on CPU, so its baseline records an absolute tolerance (a few AP points at most):
    the run that made it passes, and a baseline whose body-blur Δ is halved fails."""
    demo = Path(__file__).parent.parent / "benchmarks/baselines/demo.json"
    results = _demo_results(tmp_path)
    assert compare(results, demo).ok
    halved = json.loads(demo.read_text())
    assert halved["tolerance"]["mode"] == "absolute" and halved["tolerance"]["value"] <= 2.0
    for r in halved["rows"]:
        if (r["region"], r["method"], r["metric"]) == ("body", "blur", "AP_person"):
            assert abs(r["delta"]) / 2 > halved["tolerance"]["value"]  # the effect is large enough to matter
            r["delta"] /= 2
    report = compare(results, halved)
    assert not report.ok
    assert list(report.failed["metric"]) == ["AP_person"] and list(report.failed["method"]) == ["blur"]
    assert "deterministic baseline" in report.format()
    se_rule = compare(results, halved, tolerance={"mode": "se"}).table
    assert (se_rule["tolerance"].dropna() >= 1.0).all()  # the standard-error rule is never tighter than its floor


def test_tolerance_option_and_recorded_mode(tmp_path):
    rows = (run("none", "original", [(30.0, 1.0), (31.0, 2.0)]) + run("body", "blur", [(20.0, 1.0), (21.0, 1.5)]))
    res = write(tmp_path, "r.jsonl", rows)
    b = tmp_path / "b.json"
    assert main([str(res), "--baseline", str(b), "--write-baseline", "--tolerance", "0.25"]) == 0
    assert json.loads(b.read_text())["tolerance"] == {"mode": "absolute", "value": 0.25}
    assert main([str(res), "--baseline", str(b)]) == 0
    with pytest.raises(ValueError, match="--tolerance"):
        parse_tolerance("tight")
    bad = json.loads(b.read_text())
    bad["tolerance"] = {"mode": "absolute", "value": -1}
    with pytest.raises(BaselineError, match="tolerance"):
        read_baseline(bad)
