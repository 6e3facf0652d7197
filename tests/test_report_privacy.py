"""The report's privacy-utility view: results rows with the optional `privacy` object give a "Privacy and utility"
table in report.md, privacy.csv and privacy_utility.png; rows without it give exactly the report as before."""
import json
import math

import pandas as pd
import pytest
from PIL import Image

from avanon.study.report import ResultsError, load_results, summarize, write_report

SEG = ("AP", "AP50", "AP_person")
PRIVACY = {  # (region, method) -> privacy object of its rows
    ("none", "original"): {"detail_kept": 1.0, "face_recall": 0.91},
    ("face", "blur"): {"detail_kept": 0.62, "face_recall": 0.40},
    ("face", "mask_out"): {"detail_kept": 0.0, "face_recall": 0.02},
    ("body", "blur"): {"detail_kept": 0.55, "face_recall": None},
    ("body", "mask_out"): {"detail_kept": 0.0, "face_recall": 0.0},
}


def run(region, method, seeds_values, metrics=SEG, privacy=None, task="instance_segmentation",
        dataset="cityscapes", depth=50):
    model = ("keypoint_rcnn_r%d_fpn" if task == "keypoints" else "mask_rcnn_r%d_fpn") % depth
    rows = []
    for seed, values in enumerate(seeds_values):
        row = {"dataset": dataset, "task": task, "model": model, "depth": depth, "region": region,
               "method": method, "variant": "", "mirror": "original" if method == "original" else f"{region}_{method}",
               "seed": seed, "metrics": dict(zip(metrics, values)), "paper_table": None}
        if privacy is not None:
            row["privacy"] = privacy
        rows.append(row)
    return rows


def study(privacy=True, only=None):
    """Original, face blur / mask-out, body blur / mask-out, three seeds each (means 36.7, 36.4, ...)."""
    runs = [("none", "original", [(36.6, 62.6, 34.8), (36.7, 62.8, 35.0), (36.8, 63.0, 35.2)]),
            ("face", "blur", [(36.2, 62.4, 34.8), (36.4, 62.5, 34.9), (36.6, 62.6, 35.0)]),
            ("face", "mask_out", [(36.5, 63.0, 34.8), (36.7, 63.1, 34.9), (36.9, 63.2, 35.0)]),
            ("body", "blur", [(31.3, 54.4, 2.0), (31.4, 54.5, 2.1), (31.5, 54.6, 2.2)]),
            ("body", "mask_out", [(31.0, 53.1, 0.6), (31.2, 53.2, 0.7), (31.4, 53.3, 0.8)])]
    rows = []
    for region, method, vals in runs:
        p = PRIVACY[(region, method)] if privacy is True else privacy
        if only is not None and (region, method) not in only:
            p = None
        rows += run(region, method, vals, privacy=p)
    return rows


def write_results(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def section(md: str, heading: str):
    """Rows (lists of cells) of the Markdown tables under `heading` (up to the next '## ' heading), by subtitle."""
    lines = md.splitlines()
    start = lines.index(heading)
    tables, current = {}, None
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("### "):
            current = line[4:]
            tables[current] = []
        elif line.startswith("|") and not line.startswith("|:") and current is not None:
            tables[current].append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return tables


def test_privacy_table_csv_and_plot(tmp_path):
    paths = write_report(write_results(tmp_path / "run", study()), paper_table=False)
    assert set(paths) == {"markdown", "csv", "long_csv", "delta_png", "privacy_csv", "privacy_png"}
    md = paths["markdown"].read_text()
    tables = section(md, "## Privacy and utility")
    assert list(tables) == ["cityscapes · instance segmentation · mask_rcnn_r50_fpn · R-50"]
    header, *body = next(iter(tables.values()))
    assert header == ["Region", "Method", "Detail kept", "Face recall", "Δ AP_person"]
    assert body == [["Original", "Original", "1.00", "0.91", "–"],
                    ["Face", "Blur", "0.62", "0.40", "−0.1 ± 0.1"],
                    ["Face", "Mask-out", "0.00", "0.02", "−0.1 ± 0.1"],
                    ["Body", "Blur", "0.55", "–", "−32.9 ± 0.1"],
                    ["Body", "Mask-out", "0.00", "0.00", "−34.3 ± 0.1"]]
    assert md.index("## Privacy and utility") > md.index("## cityscapes")

    csv = pd.read_csv(paths["privacy_csv"], keep_default_na=False)
    assert list(zip(csv["region"], csv["method"])) == [("none", "original"), ("face", "blur"), ("face", "mask_out"),
                                                       ("body", "blur"), ("body", "mask_out")]
    r = csv[(csv["region"] == "body") & (csv["method"] == "mask_out")].iloc[0]
    assert r["metric"] == "AP_person" and float(r["delta"]) == pytest.approx(0.7 - 35.0)
    assert float(r["delta_se"]) == pytest.approx(math.hypot(0.1 / math.sqrt(3), 0.2 / math.sqrt(3)), abs=1e-6)
    assert float(r["detail_kept"]) == 0.0 and int(r["n_privacy"]) == 3 and int(r["n"]) == 3
    assert csv.loc[3, "face_recall"] == ""                                 # not measured: empty in the CSV

    png = paths["privacy_png"]
    assert png.name == "privacy_utility.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.size[0] > 200 and im.size[1] > 200


def test_without_privacy_the_report_is_as_before(tmp_path):
    """Rows without `privacy`, with `privacy: null` or with only nulls in it: the same report, no privacy files."""
    outs = []
    for name, p in (("absent", None), ("null", "null"), ("nulls", {"detail_kept": None, "face_recall": None})):
        rows = study(privacy=None)
        if p == "null":
            rows = [dict(r, privacy=None) for r in rows]
        elif p is not None:
            rows = [dict(r, privacy=p) for r in rows]
        paths = write_report(write_results(tmp_path / name, rows), paper_table=False)
        assert set(paths) == {"markdown", "csv", "long_csv", "delta_png"}
        assert not (tmp_path / name / "report" / "privacy.csv").exists()
        assert not (tmp_path / name / "report" / "privacy_utility.png").exists()
        md = paths["markdown"].read_text().replace(str(tmp_path / name), "RUN")
        assert "Privacy" not in md
        outs.append((md, paths["csv"].read_bytes(), paths["long_csv"].read_bytes()))
        df = load_results(tmp_path / name)
        assert not df.attrs["privacy"] and not any(c.startswith("privacy") for c in df.columns)
    assert outs[0] == outs[1] == outs[2]


def test_privacy_columns_are_not_metrics(tmp_path):
    df = load_results(write_results(tmp_path / "run", study()))
    assert df.attrs["privacy"] and df.attrs["metrics"] == list(SEG)
    assert {"privacy_detail_kept", "privacy_face_recall"} <= set(df.columns)
    assert set(summarize(df)["metric"]) == set(SEG)
    plain = summarize(load_results(write_results(tmp_path / "plain", study(privacy=None))))
    pd.testing.assert_frame_equal(summarize(df), plain)


def test_partial_privacy_and_seed_means(tmp_path):
    """Only some runs measured; seeds with different values are averaged, seeds without any are not counted."""
    rows = study(only={("body", "mask_out"), ("face", "blur")})
    fb = [r for r in rows if r["method"] == "blur" and r["region"] == "face"]
    fb[0]["privacy"] = {"detail_kept": 0.5, "face_recall": 0.3}
    fb[1]["privacy"] = {"detail_kept": 0.7, "face_recall": None}
    del fb[2]["privacy"]
    paths = write_report(write_results(tmp_path / "run", rows), paper_table=False, plots=False)
    assert "privacy_csv" in paths and "privacy_png" not in paths           # plots=False: no PNG
    _header, *body = next(iter(section(paths["markdown"].read_text(), "## Privacy and utility").values()))
    by = {(b[0], b[1]): b for b in body}
    assert by[("Face", "Blur")][2:4] == ["0.60", "0.30"]
    assert by[("Body", "Blur")][2:4] == ["–", "–"] and by[("Original", "Original")][2:] == ["–", "–", "–"]
    csv = pd.read_csv(paths["privacy_csv"])
    assert csv[(csv["region"] == "face") & (csv["method"] == "blur")]["n_privacy"].item() == 2
    assert csv[(csv["region"] == "body") & (csv["method"] == "blur")]["n_privacy"].item() == 0


def test_main_metric_falls_back_to_the_first_displayed_one_and_tables_without_privacy_are_left_out(tmp_path):
    kp = ("bbox_AP", "kp_AP")
    rows = (study(privacy=None)
            + run("none", "original", [(55.6, 65.2), (55.8, 65.4)], metrics=kp, task="keypoints", dataset="coco")
            + run("face", "blur", [(50.2, 53.4), (50.4, 53.6)], metrics=kp, task="keypoints", dataset="coco",
                  privacy={"detail_kept": 0.31, "face_recall": 0.2}))
    paths = write_report(write_results(tmp_path / "run", rows), paper_table=False)
    tables = section(paths["markdown"].read_text(), "## Privacy and utility")
    assert list(tables) == ["coco · keypoints · keypoint_rcnn_r50_fpn · R-50"]   # cityscapes has no privacy data
    header, *body = tables["coco · keypoints · keypoint_rcnn_r50_fpn · R-50"]
    assert header[-1] == "Δ box_AP"
    assert body[1] == ["Face", "Blur", "0.31", "0.20", "−5.4 ± 0.1"]
    assert paths["privacy_png"].is_file()


def test_one_seed_and_no_original(tmp_path):
    rows = run("body", "mask_out", [(31.0, 53.0, 0.7)], privacy={"detail_kept": 0.0, "face_recall": 0.0})
    with pytest.warns(Warning):
        paths = write_report(write_results(tmp_path / "run", rows), paper_table=False)
    _header, *body = next(iter(section(paths["markdown"].read_text(), "## Privacy and utility").values()))
    assert body == [["Body", "Mask-out", "0.00", "0.00", "–"]]             # no Original: no Δ
    assert paths["privacy_png"].is_file()                                  # a panel saying there is nothing


@pytest.mark.parametrize("privacy,match", [
    ("0.3", "privacy must be an object"),
    ([0.3], "privacy must be an object"),
    ({"detail_kept": "0.3"}, "privacy.detail_kept"),
    ({"detail_kept": True}, "privacy.detail_kept"),
    ({"detail_kept": 1.5}, "privacy.detail_kept"),
    ({"face_recall": -0.1}, "privacy.face_recall"),
])
def test_bad_privacy_values_name_the_line(tmp_path, privacy, match):
    rows = study(privacy=None)
    rows[3]["privacy"] = privacy
    with pytest.raises(ResultsError, match=match) as e:
        load_results(write_results(tmp_path / "run", rows))
    assert "line 4" in str(e.value)


def test_unknown_privacy_keys_are_ignored(tmp_path):
    rows = study(privacy={"detail_kept": 0.5, "detail_kept_p90": 0.9, "instances": 120})
    df = load_results(write_results(tmp_path / "run", rows))
    assert set(df["privacy_detail_kept"]) == {0.5} and df["privacy_face_recall"].isna().all()
