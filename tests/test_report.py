"""`avanon report`: seeds aggregated by hand-checked formulas, Paper F layout, Paper F numbers beside ours, plots,
and robust reading of results.jsonl."""
import json
import math

import pandas as pd
import pytest
from PIL import Image

from avanon.study import paper_f
from avanon.study.cli import report_main as main
from avanon.study.report import (ReportWarning, ResultsError, fmt_cell, fmt_delta, load_results, summarize,
                           write_report)

SEG = ("AP", "AP50", "AP_person")


def run(region, method, seeds_values, variant="", depth=50, dataset="cityscapes", task="instance_segmentation",
        metrics=SEG, paper_table=1, model=None):
    """One results.jsonl line per seed; seeds_values: one tuple of metric values per seed 0, 1, ..."""
    model = model or ("keypoint_rcnn_r%d_fpn" if task == "keypoints" else "mask_rcnn_r%d_fpn") % depth
    mirror = "original" if method == "original" else f"{region}_{method}" + (f"_{variant}" if variant else "")
    return [{"dataset": dataset, "task": task, "model": model, "depth": depth, "region": region,
             "method": method, "variant": variant, "mirror": mirror, "seed": seed,
             "metrics": dict(zip(metrics, values)), "paper_table": paper_table}
            for seed, values in enumerate(seeds_values)]


def table1_rows(paper_table=1):
    """A Cityscapes Table-1-like study, three seeds each, numbers chosen so that means are round."""
    return (run("none", "original", [(36.6, 62.6, 34.8), (36.7, 62.8, 35.0), (36.8, 63.0, 35.2)], paper_table=paper_table)
            + run("face", "blur", [(36.2, 62.4, 34.8), (36.4, 62.5, 34.9), (36.6, 62.6, 35.0)], paper_table=paper_table)
            + run("face", "mask_out", [(36.5, 63.0, 34.8), (36.7, 63.1, 34.9), (36.9, 63.2, 35.0)],
                  paper_table=paper_table)
            + run("body", "blur", [(31.3, 54.4, 2.0), (31.4, 54.5, 2.1), (31.5, 54.6, 2.2)], paper_table=paper_table)
            + run("body", "mask_out", [(31.0, 53.1, 0.6), (31.2, 53.2, 0.7), (31.4, 53.3, 0.8)],
                  paper_table=paper_table))


def write_results(path, rows, tail=""):
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def md_table(markdown: str, title_part: str):
    """The rows (lists of cells) of the Markdown table under the heading containing title_part."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## ") and title_part in line)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not line.startswith("|:"):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows[0], rows[1:]


def cell(header, rows, region, method, column):
    row = next(r for r in rows if r[0] == region and r[1] == method)
    return row[header.index(column)]


# --------------------------------------------------------------------------------------------- statistics

def test_mean_se_delta_by_hand(tmp_path):
    df = load_results(write_results(tmp_path / "run", table1_rows()))
    assert list(df.attrs["metrics"]) == ["AP", "AP50", "AP_person"] and len(df) == 15
    s = summarize(df).set_index(["region", "method", "metric"])
    orig = s.loc[("none", "original", "AP")]
    assert orig["n"] == 3 and orig["seeds"] == "0,1,2"
    assert orig["mean"] == pytest.approx(36.7)
    assert orig["se"] == pytest.approx(0.1 / math.sqrt(3))            # std(36.6, 36.7, 36.8; ddof=1) = 0.1
    assert orig["delta"] == 0 and orig["delta_se"] == 0
    r = s.loc[("body", "mask_out", "AP")]
    assert r["mean"] == pytest.approx(31.2)
    assert r["se"] == pytest.approx(0.2 / math.sqrt(3))                # std(31.0, 31.2, 31.4) = 0.2
    assert r["delta"] == pytest.approx(31.2 - 36.7)
    assert r["delta_se"] == pytest.approx(math.sqrt(0.01 / 3 + 0.04 / 3))
    assert r["rel_drop"] == pytest.approx(5.5 / 36.7)
    assert s.loc[("body", "mask_out", "AP_person")]["delta"] == pytest.approx(0.7 - 35.0)


def test_single_seed_has_no_standard_error(tmp_path):
    rows = run("none", "original", [(36.7, 62.8, 35.0)]) + run("body", "blur", [(31.4, 54.5, 2.1)])
    d = tmp_path / "run"
    s = summarize(load_results(write_results(d, rows))).set_index(["method", "metric"])
    assert s.loc[("blur", "AP")]["n"] == 1 and s.loc[("blur", "AP")]["se"] == 0
    paths = write_report(d, plots=False)
    header, body = md_table(paths["markdown"].read_text(), "cityscapes")
    assert cell(header, body, "Body", "Blur", "AP") == "31.4 ± – (−5.3)"
    assert cell(header, body, "Original", "Original", "AP") == "36.7 ± –"


def test_cell_formatting():
    assert fmt_cell(0.7, 0.1, 3, -34.3, original=False) == "0.7 ± 0.1 (−34.3)"
    assert fmt_cell(36.7, 0.1, 3, 0.0, original=True) == "36.7 ± 0.1"
    assert fmt_delta(0.3) == "+0.3" and fmt_delta(-0.04) == "0.0" and fmt_delta(float("nan")) == "n/a"


# ------------------------------------------------------------------------------------------------ layout

def test_markdown_and_csv_layout_region_groups_and_best(tmp_path):
    paths = write_report(write_results(tmp_path / "run", table1_rows()), paper_table=False)
    assert set(paths) == {"markdown", "csv", "long_csv", "delta_png"}      # one depth: no depth plot
    md = paths["markdown"].read_text()
    header, body = md_table(md, "cityscapes · instance segmentation · mask_rcnn_r50_fpn · R-50")
    assert header == ["Region", "Method", "n", "AP", "AP50", "AP_person"]
    assert [(r[0], r[1]) for r in body] == [("Original", "Original"), ("Face", "Blur"), ("Face", "Mask-out"),
                                            ("Body", "Blur"), ("Body", "Mask-out")]
    assert cell(header, body, "Original", "Original", "AP") == "36.7 ± 0.1"          # no Δ, never bold
    # best anonymized per region group, bold: face AP mask-out 36.7 > blur 36.4; body AP blur 31.4 > 31.2
    assert cell(header, body, "Face", "Mask-out", "AP") == "**36.7 ± 0.1 (0.0)**"
    assert cell(header, body, "Face", "Blur", "AP") == "36.4 ± 0.1 (−0.3)"
    assert cell(header, body, "Body", "Blur", "AP") == "**31.4 ± 0.1 (−5.3)**"
    assert cell(header, body, "Body", "Mask-out", "AP_person") == "0.7 ± 0.1 (−34.3)"
    assert cell(header, body, "Face", "Mask-out", "AP50") == "**63.1 ± 0.1 (+0.3)**"
    # ties at the printed precision are all bold (face AP_person 34.9 and 34.9)
    assert cell(header, body, "Face", "Blur", "AP_person").startswith("**34.9")
    assert cell(header, body, "Face", "Mask-out", "AP_person").startswith("**34.9")

    wide = pd.read_csv(paths["csv"], keep_default_na=False)
    assert list(zip(wide["region"], wide["method"])) == [("none", "original"), ("face", "blur"),
                                                         ("face", "mask_out"), ("body", "blur"), ("body", "mask_out")]
    assert list(wide["AP_best"]) == [False, False, True, True, False]
    assert wide.loc[4, "AP_person_cell"] == "0.7 ± 0.1 (−34.3)"
    assert float(wide.loc[4, "AP_delta"]) == pytest.approx(-5.5)
    assert not any(c.endswith("_paper_mean") for c in wide.columns)
    long = pd.read_csv(paths["long_csv"])
    assert len(long) == 15 and {"mean", "se", "n", "delta", "delta_se", "best", "rel_drop"} <= set(long.columns)


def test_paper_f_numbers_side_by_side_table1(tmp_path):
    paths = write_report(write_results(tmp_path / "run", table1_rows(paper_table=1)), plots=False)
    md = paths["markdown"].read_text()
    header, body = md_table(md, "cityscapes")
    assert header[3:7] == ["AP", "AP (Paper F)", "AP50", "AP50 (Paper F)"]
    assert cell(header, body, "Body", "Mask-out", "AP_person (Paper F)") == "0.7 ± 0.1 (−34.3)"
    assert cell(header, body, "Body", "Blur", "AP (Paper F)") == "31.4 ± 0.2 (−5.3)"
    assert cell(header, body, "Original", "Original", "AP (Paper F)") == "36.7 ± 0.1"
    assert cell(header, body, "Face", "Mask-out", "AP (Paper F)") == "36.7 ± 0.2 (0.0)"
    assert "Table 1" in md
    wide = pd.read_csv(paths["csv"])
    assert wide.loc[4, "AP_person_paper_mean"] == pytest.approx(0.7)
    assert wide.loc[4, "AP_person_paper_delta"] == pytest.approx(-34.3)


def test_paper_table_argument_overrides_rows(tmp_path):
    d = write_results(tmp_path / "run", table1_rows(paper_table=None))
    assert "(Paper F)" not in write_report(d, tmp_path / "a", plots=False)["markdown"].read_text()
    md = write_report(d, tmp_path / "b", paper_table=1, plots=False)["markdown"].read_text()
    header, body = md_table(md, "cityscapes")
    assert cell(header, body, "Body", "Mask-out", "AP_person (Paper F)") == "0.7 ± 0.1 (−34.3)"
    # table 2 is BDD100K: nothing matches Cityscapes rows, so no paper columns
    assert "(Paper F)" not in write_report(d, tmp_path / "c", paper_table=2, plots=False)["markdown"].read_text()


def test_paper_rows_map_names():
    t1 = paper_f.paper_rows(1)
    assert len(t1) == 27 and set(t1["region"]) == {"none", "face", "body"}
    r = t1[(t1["region"] == "body") & (t1["method"] == "mask_out") & (t1["metric"] == "AP_person")].iloc[0]
    assert (r["mean"], r["se"], r["delta"]) == (0.7, 0.1, -34.3)
    t4 = paper_f.paper_rows(4)
    assert set(zip(t4["method"], t4["variant"])) == {("original", ""), ("realistic", "truncation_none"),
                                                     ("realistic", "truncation_unimodal"),
                                                     ("realistic", "truncation_multimodal")}
    assert set(t4[t4["method"] == "original"]["source_table"]) == {1}
    t3 = paper_f.paper_rows(3)
    assert set(t3["metric"]) == {"box_AP", "kp_AP"}
    assert paper_f.lookup(3, dataset="coco", task="keypoints", region="face", method="blur",
                          metric="bbox_AP")["delta"] == -5.4
    assert paper_f.lookup(1, dataset="cityscapes", task="instance_segmentation", region="body", method="blur",
                          metric="AP", depth=101) is None
    with pytest.raises(ValueError):
        paper_f.paper_rows(5)


def test_packaged_csv_has_every_cell_of_tables_1_to_4():
    assert len(paper_f.load_tables()) == 27 + 21 + 16 + 9                # Tables 1-4


def test_variant_without_original_joins_main_table_with_table4_numbers(tmp_path):
    rows = table1_rows() + run("body", "realistic", [(33.8,), (34.0,), (34.2,)], variant="truncation_none",
                               metrics=("AP",), paper_table=4)
    paths = write_report(write_results(tmp_path / "run", rows), metrics=["AP"], plots=False)
    md = paths["markdown"].read_text()
    assert md.count("\n## ") == 1                                          # one table
    header, body = md_table(md, "cityscapes")
    assert header == ["Region", "Method", "n", "AP", "AP (Paper F)"]
    assert cell(header, body, "Body", "Realistic [truncation_none]", "AP") == "**34.0 ± 0.1 (−2.7)**"  # best body
    assert cell(header, body, "Body", "Realistic [truncation_none]", "AP (Paper F)") == "34.0 ± 0.2 (−2.7)"
    assert "no Original trained with variant `truncation_none`" in md


def test_variant_with_its_own_original_is_its_own_table(tmp_path):
    rows = table1_rows() + [dict(r, variant="other_classes") for r in
                            run("none", "original", [(40.0,), (40.2,)], metrics=("AP",))
                            + run("body", "mask_out", [(39.0,), (39.2,)], metrics=("AP",))]
    md = write_report(write_results(tmp_path / "run", rows), plots=False)["markdown"].read_text()
    header, body = md_table(md, "variant other_classes")
    assert cell(header, body, "Body", "Mask-out", "AP") == "39.1 ± 0.1 (−1.0)"


def test_default_metrics_are_those_every_run_has_and_keypoint_names(tmp_path):
    rows = (run("none", "original", [(55.6, 65.2, 1.0), (55.8, 65.2, 2.0)], dataset="coco", task="keypoints",
                metrics=("bbox_AP", "kp_AP", "extra"), paper_table=3)
            + run("face", "blur", [(50.2, 53.4), (50.4, 53.6)], dataset="coco", task="keypoints",
                  metrics=("bbox_AP", "kp_AP"), paper_table=3))
    paths = write_report(write_results(tmp_path / "run", rows), plots=False)
    header, body = md_table(paths["markdown"].read_text(), "coco")
    assert header == ["Region", "Method", "n", "box_AP", "box_AP (Paper F)", "kp_AP", "kp_AP (Paper F)"]
    assert cell(header, body, "Face", "Blur", "box_AP") == "50.3 ± 0.1 (−5.4)"
    assert cell(header, body, "Face", "Blur", "kp_AP (Paper F)") == "53.5 ± 0.2 (−11.7)"


# ------------------------------------------------------------------------------------------------- plots

def test_pngs_are_valid_images_and_depth_plot_relative_drop(tmp_path):
    rows = table1_rows() + run("none", "original", [(38.0, 64.0, 36.0), (38.2, 64.2, 36.2)], depth=101,
                               paper_table=None) \
        + run("body", "mask_out", [(31.0, 53.0, 0.5), (31.2, 53.2, 0.7)], depth=101, paper_table=None)
    paths = write_report(write_results(tmp_path / "run", rows))
    for key in ("delta_png", "depth_png"):
        p = paths[key]
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.size[0] > 200 and im.size[1] > 200
    md = paths["markdown"].read_text()
    header, body = md_table(md, "Relative drop per ResNet depth")
    row = next(r for r in body if r[3] == "Mask-out" and r[4] == "AP")
    assert row[header.index("R-50")] == f"{100 * 5.5 / 36.7:.1f}%"          # (original − anonymized) / original
    assert row[header.index("R-101")] == f"{100 * (38.1 - 31.1) / 38.1:.1f}%"


# ----------------------------------------------------------------------------------------- robust input

def test_truncated_last_line_is_ignored_with_warning(tmp_path):
    d = write_results(tmp_path / "run", table1_rows(), tail='{"dataset": "cityscapes", "task": "inst')
    with pytest.warns(ReportWarning, match="line 16.*truncated"):
        df = load_results(d)
    assert len(df) == 15
    with pytest.warns(ReportWarning, match="truncated"):
        paths = write_report(d, plots=False)
    assert "truncated last line" in paths["markdown"].read_text()


def test_invalid_json_before_the_last_line_is_an_error(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    lines = [json.dumps(r) for r in table1_rows()]
    lines[2] = lines[2][:30]
    (d / "results.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ResultsError, match=r"results.jsonl line 3: not valid JSON"):
        load_results(d)


def test_missing_keys_error_names_line_and_keys(tmp_path):
    rows = table1_rows()
    del rows[4]["metrics"], rows[4]["seed"]
    with pytest.raises(ResultsError, match=r"line 5: missing key\(s\) seed, metrics"):
        load_results(write_results(tmp_path / "run", rows))
    rows = table1_rows()
    rows[1]["metrics"]["AP"] = "high"
    with pytest.raises(ResultsError, match=r"line 2: metric 'AP' must be a number"):
        load_results(write_results(tmp_path / "run2", rows))
    with pytest.raises(ResultsError, match="no such results file"):
        load_results(tmp_path / "nowhere")


def test_no_original_rows_delta_na_with_warning(tmp_path):
    rows = [r for r in table1_rows() if r["method"] != "original"]
    d = write_results(tmp_path / "run", rows)
    with pytest.warns(ReportWarning, match="no Original"):
        paths = write_report(d)
    header, body = md_table(paths["markdown"].read_text(), "cityscapes")
    assert cell(header, body, "Body", "Mask-out", "AP") == "31.2 ± 0.1 (n/a)"
    with Image.open(paths["delta_png"]) as im:
        im.verify()


def test_duplicate_run_later_line_wins(tmp_path):
    rows = table1_rows() + [dict(table1_rows()[0], metrics={"AP": 36.9, "AP50": 62.6, "AP_person": 34.8})]
    with pytest.warns(ReportWarning, match="appears again on line 16"):
        df = load_results(write_results(tmp_path / "run", rows))
    s = summarize(df).set_index(["method", "region", "metric"])
    assert s.loc[("original", "none", "AP")]["mean"] == pytest.approx((36.9 + 36.7 + 36.8) / 3)


def test_two_mirrors_under_one_key_is_an_error(tmp_path):
    rows = table1_rows() + [dict(r, mirror="body_blur_strong", seed=r["seed"] + 10)
                            for r in run("body", "blur", [(30.0, 50.0, 1.0)])]
    with pytest.raises(ResultsError, match="different mirrors"):
        load_results(write_results(tmp_path / "run", rows))


def test_cli_exit_codes(tmp_path, capsys):
    d = write_results(tmp_path / "run", table1_rows())
    assert main([str(d), "--out", str(tmp_path / "out"), "--paper-table", "1"]) == 0
    assert (tmp_path / "out" / "report.md").is_file()
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such results file" in capsys.readouterr().err


def test_null_and_nan_metrics_are_not_measured(tmp_path):
    rows = table1_rows()
    rows[3]["metrics"]["AP_person"] = None                     # face blur seed 0
    rows[4]["metrics"]["AP_person"] = float("nan")             # face blur seed 1 (json writes NaN)
    s = summarize(load_results(write_results(tmp_path / "run", rows))).set_index(["region", "method", "metric"])
    r = s.loc[("face", "blur", "AP_person")]
    assert r["n"] == 1 and r["seeds"] == "2" and r["mean"] == pytest.approx(35.0) and r["se"] == 0
    assert s.loc[("face", "blur", "AP")]["n"] == 3
