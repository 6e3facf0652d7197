"""Broken datasets, one defect class at a time: no person in the clear in a mirror, nothing written outside OUT,
the source tree unchanged, a clear exit code and message.

Classes: paths that escape the dataset or the mirror; annotations that do not attach; inputs that used to crash
the run; resume that trusted the disk; and smaller gaps (merge, verify, bit depth, empty selections).
"""
import json
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapter_fixtures import (
    BddObject, box_mask, coco_ann, coco_image, make_cityscapes, write_bdd, write_coco,
    write_image, write_json,
)
from avanon.mirror import process as process_mod
from avanon.mirror import writer as mirror_mod
from avanon.cli import main
from avanon.mirror.imageio import sha256_file
from avanon.mirror import read_manifest
from avanon.mirror.verify import verify_mirror

REPO = Path(__file__).resolve().parents[1]
PERSON_BOX = (10, 5, 50, 45)  # x0, y0, x1, y1 in the 64x48 fixture images
PERSON_POLY = [[10, 5, 50, 5, 50, 45, 10, 45]]


# ------------------------------------------------------------------------------------------------------ helpers
def tree_hashes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def outside_snapshot(tmp_path: Path, out: Path, src: Path) -> set:
    """Every file under tmp_path that is neither in OUT nor in the source (must not grow)."""
    return {p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(out) and not p.is_relative_to(src)}


def run_cli(args, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def anonymize(dataset, root, out, capsys, *extra) -> tuple[int, str]:
    return run_cli(["anonymize", "--dataset", dataset, "--root", root, "--region", "body", "--method", "mask_out",
                    "--out", out, "--no-progress", *extra], capsys)


def person_in_clear(mirror_file: Path, source_file: Path, mask: np.ndarray) -> bool:
    """True when most of the person's pixels in the mirror still equal the source's (mask-out changes them all)."""
    got = np.asarray(Image.open(mirror_file).convert("RGB")).astype(int)
    want = np.asarray(Image.open(source_file).convert("RGB")).astype(int)
    if got.shape != want.shape:
        return False
    same = (np.abs(got - want).max(axis=-1) <= 12)[mask]
    return same.mean() > 0.1


def assert_no_person_in_clear(mirror: Path, src: Path, truth: dict) -> None:
    """truth: {relative image path: [full-image person masks]} of what the images really show."""
    for rel, masks in truth.items():
        if (mirror / rel).exists():
            for mask in masks:
                assert not person_in_clear(mirror / rel, src / rel, mask), f"{rel}: a person is in the clear"


def assert_same_as_fresh(mirror: Path, fresh: Path) -> None:
    """A resumed mirror equals one written from scratch, byte for byte (run metadata aside), and verifies."""
    meta = ("run.json", "summary.json")
    got = {k: v for k, v in tree_hashes(mirror).items() if k not in meta}
    assert got == {k: v for k, v in tree_hashes(fresh).items() if k not in meta}
    assert verify_mirror(mirror).clean


def coco_dataset(root: Path, images=None, annotations=None) -> Path:
    """Two 64x48 images: 1 with a large person, 2 with none."""
    images = images if images is not None else [coco_image(1), coco_image(2)]
    annotations = annotations if annotations is not None else [coco_ann(11, 1, PERSON_POLY)]
    write_coco(root, "train", images, annotations)
    return root


COCO_TRUTH = {"train2017/000000000001.jpg": [box_mask(*PERSON_BOX)]}


def mirror_of(out: Path, dataset: str, name: str = "body_mask_out") -> Path:
    return out / dataset / name


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "src", tmp_path / "out"


def check_refused(code, text, src, before, tmp_path, out, outside_before, match):
    assert code == 2, text
    assert match in text, text
    assert "Traceback" not in text
    assert tree_hashes(src) == before
    assert outside_snapshot(tmp_path, out, src) == outside_before


# ------------------------------------------------------------------------------------- 1. paths that escape
def test_coco_file_name_with_dotdot_is_refused_and_overwrites_nothing(tmp_path, dirs, capsys):
    src, out = dirs
    coco_dataset(src)
    victim = write_image(tmp_path / "elsewhere" / "victim.jpg", seed=9)
    data = json.loads((src / "annotations/person_keypoints_train2017.json").read_text())
    data["images"][0]["file_name"] = "../../elsewhere/victim.jpg"
    write_json(src / "annotations/person_keypoints_train2017.json", data)
    before, outside = tree_hashes(src), outside_snapshot(tmp_path, out, src)
    victim_hash = sha256_file(victim)
    code, text = anonymize("coco", src, out, capsys)
    check_refused(code, text, src, before, tmp_path, out, outside, "not a plain relative path")
    assert sha256_file(victim) == victim_hash


def test_coco_absolute_file_name_of_another_source_image_is_refused(tmp_path, dirs, capsys):
    src, out = dirs
    coco_dataset(src)
    data = json.loads((src / "annotations/person_keypoints_train2017.json").read_text())
    data["images"][1]["file_name"] = str((src / "train2017/000000000001.jpg").resolve())
    write_json(src / "annotations/person_keypoints_train2017.json", data)
    before, outside = tree_hashes(src), outside_snapshot(tmp_path, out, src)
    code, text = anonymize("coco", src, out, capsys)
    check_refused(code, text, src, before, tmp_path, out, outside, "not a plain relative path")


def test_image_symlinked_outside_the_root_is_refused(tmp_path, dirs, capsys):
    src, out = dirs
    coco_dataset(src)
    outside_img = write_image(tmp_path / "elsewhere" / "x.jpg", seed=3)
    (src / "train2017/000000000002.jpg").unlink()
    (src / "train2017/000000000002.jpg").symlink_to(outside_img)
    before, outside = tree_hashes(src), outside_snapshot(tmp_path, out, src)
    code, text = anonymize("coco", src, out, capsys)
    check_refused(code, text, src, before, tmp_path, out, outside, "outside the dataset root")


def test_cityscapes_polygons_symlinked_to_a_system_file_is_refused(tmp_path, dirs, capsys):
    src, out = dirs
    make_cityscapes(src)
    target = write_json(tmp_path / "etc" / "passwd.json", {"secret": 1})
    poly = next(src.glob("gtFine/train/aachen/*_polygons.json"))
    poly.unlink()
    poly.symlink_to(target)
    before, outside = tree_hashes(src), outside_snapshot(tmp_path, out, src)
    code, text = anonymize("cityscapes", src, out, capsys)
    check_refused(code, text, src, before, tmp_path, out, outside, "outside the dataset root")
    assert not any(out.rglob("*.json")) if out.exists() else True


def test_city_folders_symlinked_inside_the_root_are_followed_consistently(tmp_path, dirs, capsys):
    """A symlink that stays inside the root is followed by every reader: images anonymized and gtFine copied."""
    src, out = dirs
    make_cityscapes(src)
    for top in ("leftImg8bit", "gtFine"):
        (src / "store" / top).mkdir(parents=True)
        (src / top / "train" / "aachen").rename(src / "store" / top / "aachen")
        (src / top / "train" / "aachen").symlink_to(Path("../../store") / top / "aachen")
    code, text = anonymize("cityscapes", src, out, capsys)
    assert code == 0, text
    mirror = mirror_of(out, "cityscapes")
    assert (mirror / "gtFine/train/aachen/aachen_000000_000019_gtFine_polygons.json").is_file()
    assert not (mirror / "gtFine/train/aachen").is_symlink()
    assert read_manifest(mirror)["leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"]["status"] == \
        "anonymized"
    assert verify_mirror(mirror).clean


def test_city_folder_symlinked_outside_the_root_is_refused(tmp_path, dirs, capsys):
    src, out = dirs
    make_cityscapes(src)
    (tmp_path / "elsewhere").mkdir()
    (src / "leftImg8bit/train/aachen").rename(tmp_path / "elsewhere" / "aachen")
    (src / "leftImg8bit/train/aachen").symlink_to(tmp_path / "elsewhere" / "aachen")
    before, outside = tree_hashes(src), outside_snapshot(tmp_path, out, src)
    code, text = anonymize("cityscapes", src, out, capsys)
    check_refused(code, text, src, before, tmp_path, out, outside, "outside the dataset root")


def test_bdd_bitmask_symlinked_outside_the_root_is_refused(tmp_path, dirs, capsys):
    src, out = dirs
    write_bdd(src, "train", {"a.jpg": [BddObject("1", "pedestrian", box_mask(*PERSON_BOX))]}, formats=("bitmask",))
    mask = src / "labels/ins_seg/bitmasks/train/a.png"
    mask.rename(tmp_path / "a.png")
    mask.symlink_to(tmp_path / "a.png")
    before, outside = tree_hashes(src), outside_snapshot(tmp_path, out, src)
    code, text = anonymize("bdd100k", src, out, capsys)
    check_refused(code, text, src, before, tmp_path, out, outside, "outside the dataset root")


def test_a_symlink_inside_the_mirror_leading_into_the_source_is_refused(tmp_path, dirs, capsys):
    """The overwrite-the-source attack from the output side: OUT/.../leftImg8bit -> SOURCE/leftImg8bit."""
    src, out = dirs
    make_cityscapes(src)
    mirror = mirror_of(out, "cityscapes")
    mirror.mkdir(parents=True)
    (mirror / "leftImg8bit").symlink_to(src / "leftImg8bit")
    before = tree_hashes(src)
    code, text = anonymize("cityscapes", src, out, capsys)
    assert code == 2 and "outside the mirror" in text, text
    assert tree_hashes(src) == before


def test_an_entry_named_dotdot_cannot_write_into_out_itself(dirs, capsys):
    src, out = dirs
    coco_dataset(src)
    code, text = anonymize("coco", src, out, capsys, "--name", "..")
    assert code == 2 and "not a valid directory name" in text
    assert not out.exists()


# --------------------------------------------------------------------------- 2. annotations that do not attach
def _edit_coco(src: Path, edit) -> None:
    path = src / "annotations/person_keypoints_train2017.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["annotations"][0].update(image_id="1"), "image_id '1' is not the integer id"),
    (lambda d: d["annotations"][0].update(category_id="1"), "category_id '1' is not the integer id"),
    (lambda d: d["annotations"][0].update(category_id=7), "category_id 7 is not the integer id"),
    (lambda d: d["annotations"][0].update(iscrowd="0"), "iscrowd must be 0 or 1, got '0'"),
    (lambda d: d["images"][0].update(id="1"), "id must be an integer, got '1'"),
    (lambda d: d["images"][1].update(id=1), "image id 1 is listed twice"),
    (lambda d: d["images"][1].update(file_name=d["images"][0]["file_name"]), "is listed twice"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), "annotation id is used twice"),
    (lambda d: d["images"][0].update(width="abc"), "width must be a positive integer"),
    (lambda d: d["images"][0].update(width=float("nan")), "width must be a positive integer"),
    (lambda d: d["images"][0].update(height=-48), "height must be a positive integer"),
    (lambda d: d["images"][0].update(width=64.0), "width must be a positive integer"),
    (lambda d: d["categories"][0].update(id="1"), "needs an integer id"),
])
def test_coco_annotations_that_do_not_attach_refuse_the_dataset(edit, match, tmp_path, dirs, capsys):
    src, out = dirs
    coco_dataset(src)
    _edit_coco(src, edit)
    before, outside = tree_hashes(src), outside_snapshot(tmp_path, out, src)
    code, text = anonymize("coco", src, out, capsys)
    check_refused(code, text, src, before, tmp_path, out, outside, match)


@pytest.mark.parametrize("size", [(32, 48), (48, 64), (64, 24)])
def test_annotation_size_that_does_not_fit_the_image_fails_it(size, dirs, capsys):
    """Annotation width/height smaller than or swapped against the real image: the people's masks are clipped to
    nothing, so the record looks empty, but the image is never copied in the clear."""
    src, out = dirs
    w, h = size
    coco_dataset(src, images=[coco_image(1, width=w, height=h), coco_image(2)],
                 annotations=[coco_ann(11, 1, [[w + 1, 2, w + 9, 2, w + 9, 20, w + 1, 20]])])
    write_image(src / "train2017/000000000001.jpg", 64, 48, seed=0)  # the real image is 64x48
    code, text = anonymize("coco", src, out, capsys)
    assert code == 1 and "FAILED train2017/000000000001.jpg" in text and "annotation says" in text, text
    mirror = mirror_of(out, "coco")
    assert not (mirror / "train2017/000000000001.jpg").exists()
    assert read_manifest(mirror)["train2017/000000000002.jpg"]["status"] == "copied"
    assert verify_mirror(mirror).clean


def _bdd_scene():
    return {"a.jpg": [BddObject("1", "pedestrian", box_mask(*PERSON_BOX))], "b.jpg": []}


@pytest.mark.parametrize("edit, match", [
    (lambda f: f["frames"].append(dict(f["frames"][0])), "listed more than once"),
    (lambda f: f["frames"][0]["labels"][0].update(category="person"), "unknown category 'person'"),
    (lambda f: f["frames"][0]["labels"].append(dict(f["frames"][0]["labels"][0])), "repeated in the frame"),
])
def test_bdd_scalabel_labels_that_do_not_attach_refuse_the_dataset(edit, match, tmp_path, dirs, capsys):
    src, out = dirs
    write_bdd(src, "train", _bdd_scene(), formats=("rle",))
    path = src / "labels/ins_seg/rles/ins_seg_train.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    before, outside = tree_hashes(src), outside_snapshot(tmp_path, out, src)
    code, text = anonymize("bdd100k", src, out, capsys, "--option", "labels=rle")
    check_refused(code, text, src, before, tmp_path, out, outside, match)


@pytest.mark.parametrize("labels", ["rle", "bitmask"])
def test_bdd_label_that_cannot_be_trusted_fails_its_image(labels, dirs, capsys):
    """A crowd flag given as the string "false" (truthy), or bitmask pixels of an unknown category."""
    src, out = dirs
    write_bdd(src, "train", _bdd_scene(), formats=(labels,))
    if labels == "rle":
        path = src / "labels/ins_seg/rles/ins_seg_train.json"
        data = json.loads(path.read_text())
        data["frames"][0]["labels"][0]["attributes"]["crowd"] = "false"
        path.write_text(json.dumps(data))
    else:
        path = src / "labels/ins_seg/bitmasks/train/a.png"
        px = np.asarray(Image.open(path)).copy()
        px[box_mask(*PERSON_BOX), 0] = 42
        Image.fromarray(px).save(path)
    code, text = anonymize("bdd100k", src, out, capsys, "--option", f"labels={labels}")
    assert code == 1 and "FAILED images/10k/train/a.jpg" in text, text
    mirror = mirror_of(out, "bdd100k")
    assert not (mirror / "images/10k/train/a.jpg").exists()
    assert_no_person_in_clear(mirror, src, {"images/10k/train/a.jpg": [box_mask(*PERSON_BOX)]})


# ------------------------------------------------------------------------------------ 3. crashes -> clear errors
def png_bomb(path: Path, width: int = 30000, height: int = 30000, mode: int = 2) -> Path:
    """A PNG whose header claims 900 Mpx (over Pillow's decompression-bomb limit); the data is a stub."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8 if mode != 0 else 16, mode, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("which", ["image", "instance_ids"])
def test_cityscapes_decompression_bomb_fails_the_image_not_the_run(which, dirs, capsys):
    src, out = dirs
    make_cityscapes(src)
    stem = "aachen_000000_000019"
    if which == "image":
        png_bomb(src / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png")
    else:
        png_bomb(src / f"gtFine/train/aachen/{stem}_gtFine_instanceIds.png", mode=0)
    code, text = anonymize("cityscapes", src, out, capsys)
    assert code == 1 and f"FAILED leftImg8bit/train/aachen/{stem}_leftImg8bit.png" in text, text
    assert "Traceback" not in text
    lines = read_manifest(mirror_of(out, "cityscapes"))
    assert sum(line["status"] == "anonymized" for line in lines.values()) == 1


def test_bdd_bitmask_decompression_bomb_fails_the_image(dirs, capsys):
    src, out = dirs
    write_bdd(src, "train", _bdd_scene(), formats=("bitmask",))
    png_bomb(src / "labels/ins_seg/bitmasks/train/a.png", mode=6)
    code, text = anonymize("bdd100k", src, out, capsys)
    assert code == 1 and "FAILED images/10k/train/a.jpg" in text and "Traceback" not in text, text
    assert not (mirror_of(out, "bdd100k") / "images/10k/train/a.jpg").exists()


@pytest.mark.parametrize("dataset, option, match", [
    ("cityscapes", "masks=5", "dataset.options.masks: expected a string, got 5"),
    ("cityscapes", "colour=red", "dataset.options.colour: unknown option"),
    ("cityscapes", "categories=everything", "categories must be one of"),
    ("coco", "annotation_file=/etc/passwd", "not a plain relative path"),
    ("synthetic", "seed=abc", "dataset.options.seed: expected an integer"),
    ("synthetic", "image_size=[8, 8]", "image_size"),
    ("synthetic", "format=kitti", "unknown format"),
])
def test_bad_dataset_options_are_a_clear_error(dataset, option, match, tmp_path, capsys):
    src = tmp_path / "src"
    if dataset == "cityscapes":
        make_cityscapes(src)
    elif dataset == "coco":
        coco_dataset(src)
    code, text = anonymize(dataset, src, tmp_path / "out", capsys, "--option", option)
    assert code == 2 and match in text and "Traceback" not in text, text


def test_unwritable_output_stops_with_a_message_and_a_compacted_manifest(dirs, capsys, monkeypatch):
    src, out = dirs
    make_cityscapes(src)
    real = mirror_mod.atomic_write_bytes
    calls = {"n": 0}

    def eacces_on_second_image(path, data):
        if Path(path).suffix == ".png":
            calls["n"] += 1
            if calls["n"] == 2:
                raise PermissionError(13, "Permission denied", str(path))
        return real(path, data)

    monkeypatch.setattr(process_mod, "atomic_write_bytes", eacces_on_second_image)
    code, text = anonymize("cityscapes", src, out, capsys)
    assert code == 2 and "Permission denied" in text and "Traceback" not in text, text
    mirror = mirror_of(out, "cityscapes")
    assert (mirror / "manifest.jsonl").is_file()
    assert all(line["status"] != "failed" for line in read_manifest(mirror).values())


def _cli(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avanon.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, **kw)


@pytest.mark.slow
def test_file_size_limit_stops_with_a_message(dirs):
    """EFBIG from a real RLIMIT_FSIZE: a clear error and exit 2, never a traceback or a half-written file."""
    import resource

    src, out = dirs
    make_cityscapes(src)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    r = _cli(["anonymize", "--dataset", "cityscapes", "--root", src, "--region", "body", "--method", "mask_out",
              "--out", out, "--no-progress"], preexec_fn=limit)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "File too large" in r.stderr and "Traceback" not in r.stderr
    assert not [p for p in out.rglob("*") if mirror_mod.TEMP_FILE.match(p.name)]


@pytest.mark.slow
def test_stdout_closed_early_is_not_a_traceback(dirs):
    src, out = dirs
    make_cityscapes(src)
    assert _cli(["anonymize", "--dataset", "cityscapes", "--root", src, "--region", "body", "--method",
                 "mask_out", "--out", out, "--no-progress"]).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "avanon.cli", "verify", str(mirror_of(out, "cityscapes"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()  # the reader went away (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


# ------------------------------------------------------------------------------- 4. resume trusts what is on disk
def test_people_added_to_an_image_that_had_none_are_anonymized_on_rerun(dirs, capsys):
    src, out = dirs
    coco_dataset(src)
    assert anonymize("coco", src, out, capsys)[0] == 0
    mirror = mirror_of(out, "coco")
    assert read_manifest(mirror)["train2017/000000000002.jpg"]["status"] == "copied"
    _edit_coco(src, lambda d: d["annotations"].append(coco_ann(12, 2, PERSON_POLY)))
    code, text = anonymize("coco", src, out, capsys)
    assert code == 0 and "1 already done" in text, text
    assert read_manifest(mirror)["train2017/000000000002.jpg"]["status"] == "anonymized"
    truth = dict(COCO_TRUTH, **{"train2017/000000000002.jpg": [box_mask(*PERSON_BOX)]})
    assert_no_person_in_clear(mirror, src, truth)
    assert verify_mirror(mirror).clean


def test_another_dataset_into_the_same_out_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    coco_dataset(tmp_path / "a")
    coco_dataset(tmp_path / "b", images=[coco_image(1), coco_image(3)],
                 annotations=[coco_ann(11, 1, PERSON_POLY)])
    assert anonymize("coco", tmp_path / "a", out, capsys)[0] == 0
    code, text = anonymize("coco", tmp_path / "b", out, capsys)
    assert code == 2 and "mirror of another dataset" in text, text


def test_changed_source_image_and_edited_annotation_are_redone(tmp_path, dirs, capsys):
    src, out = dirs
    coco_dataset(src)
    assert anonymize("coco", src, out, capsys)[0] == 0
    write_image(src / "train2017/000000000002.jpg", seed=77)  # same size, other pixels
    # move the person without changing the file's size: 10 -> 12 in one polygon coordinate pair
    _edit_coco(src, lambda d: d["annotations"][0].update(segmentation=[[12, 5, 50, 5, 50, 45, 12, 45]]))
    code, text = anonymize("coco", src, out, capsys)
    assert code == 0, text
    ref = tmp_path / "ref"
    assert anonymize("coco", src, ref, capsys)[0] == 0
    assert_same_as_fresh(mirror_of(out, "coco"), mirror_of(ref, "coco"))


def test_annotation_edited_in_place_keeps_size_and_mtime_still_recopied(dirs, capsys):
    """The mirror's copy of a tree file is checked by content when its mtime differs."""
    src, out = dirs
    make_cityscapes(src)
    assert anonymize("cityscapes", src, out, capsys)[0] == 0
    cam = src / "camera/train/aachen/aachen_000000_000019_camera.json"
    cam.write_text(cam.read_text().replace("0.2", "0.3"))
    assert anonymize("cityscapes", src, out, capsys)[0] == 0
    assert (mirror_of(out, "cityscapes") / cam.relative_to(src)).read_text() == cam.read_text()


@pytest.mark.slow
def test_kill_during_a_write_leaves_no_trace_after_resume(tmp_path, dirs):
    """SIGKILL injected right after the temp file of the second image is written, before its rename."""
    src, out = dirs
    make_cityscapes(src)
    args = ["anonymize", "--dataset", "cityscapes", "--root", str(src), "--region", "body", "--method",
            "blur", "--out", str(out), "--no-progress"]
    killer = (
        "import os, signal, sys\n"
        "from avanon.mirror import imageio\n"
        "real, n = os.replace, [0]\n"
        "def replace(a, b):\n"
        "    if str(b).endswith('.png'):\n"
        "        n[0] += 1\n"
        "        if n[0] == 2:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(a, b)\n"
        "imageio.os.replace = replace\n"
        "from avanon.cli import main\n"
        f"sys.exit(main({args!r}))\n")
    r = subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == -signal.SIGKILL
    mirror = mirror_of(out, "cityscapes", "body_blur")
    assert [p.name for p in mirror.rglob(".*.tmp-*")], "the kill should have left a temp file"
    r = _cli(args)
    assert r.returncode == 0 and "removed 1 temp files" in r.stdout, r.stdout + r.stderr
    assert not list(mirror.rglob(".*.tmp-*"))
    ref = tmp_path / "ref"
    assert _cli([*args[:-2], str(ref), "--no-progress"]).returncode == 0
    assert_same_as_fresh(mirror, mirror_of(ref, "cityscapes", "body_blur"))


# ------------------------------------------------------------------------------------------- 5. smaller gaps
def test_verify_fails_on_a_file_that_is_not_in_the_source_tree(dirs, capsys):
    src, out = dirs
    make_cityscapes(src)
    assert anonymize("cityscapes", src, out, capsys)[0] == 0
    mirror = mirror_of(out, "cityscapes")
    person = src / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    (mirror / "leftImg8bit/train/aachen/aachen_000099_000019_leftImg8bit.png").write_bytes(person.read_bytes())
    code, text = run_cli(["verify", mirror], capsys)
    assert code == 1 and "not in the source tree" in text and "NOT CLEAN" in text, text


def test_merge_refuses_a_missing_path_and_missing_shards(tmp_path, dirs, capsys):
    src, out = dirs
    make_cityscapes(src)
    code, text = run_cli(["merge", tmp_path / "typo"], capsys)
    assert code == 2 and not (tmp_path / "typo").exists()
    code, text = anonymize("cityscapes", src, out, capsys, "--shard", "0/3")
    assert code == 0, text
    anonymize("cityscapes", src, out, capsys, "--shard", "2/3")
    mirror = mirror_of(out, "cityscapes")
    code, text = run_cli(["merge", mirror], capsys)
    assert code == 1 and "shards 1/3 never ran" in text, text
    assert (mirror / "manifest-0of3.jsonl").is_file()  # nothing merged: the missing shard can still run
    anonymize("cityscapes", src, out, capsys, "--shard", "1/3")
    code, text = run_cli(["merge", mirror], capsys)
    assert code == 0, text
    assert verify_mirror(mirror).clean


def test_sixteen_bit_png_is_failed_not_narrowed(dirs, capsys):
    src, out = dirs
    make_cityscapes(src)
    rel = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    rgb16 = (np.random.default_rng(0).integers(0, 65535, (48, 64, 3))).astype(np.uint16)
    import cv2

    cv2.imwrite(str(src / rel), rgb16)
    code, text = anonymize("cityscapes", src, out, capsys)
    assert code == 1 and "16-bit PNG" in text, text
    assert not (mirror_of(out, "cityscapes") / rel).exists()


def test_workers_zero_is_refused(dirs, capsys):
    src, out = dirs
    code, text = anonymize("cityscapes", src, out, capsys, "--workers", "0")
    assert code == 2 and "positive integer" in text


@pytest.mark.parametrize("filters, match", [
    ("categories=[]", "anonymizes nobody"),
    ("categories=[persn]", "'persn' is not a human category"),
])
def test_a_selection_of_nobody_is_refused(filters, match, dirs, capsys):
    src, out = dirs
    make_cityscapes(src)
    code, text = anonymize("cityscapes", src, out, capsys, "--filter", filters)
    assert code == 2 and match in text, text
    assert not out.exists()


def test_allow_empty_accepts_it_explicitly(dirs, capsys):
    src, out = dirs
    make_cityscapes(src)
    code, text = anonymize("cityscapes", src, out, capsys, "--filter", "categories=[]", "--filter",
                           "allow_empty=true")
    assert code == 0, text


def test_face_box_file_that_covers_no_image_is_refused(dirs, capsys):
    src, out = dirs
    make_cityscapes(src)
    write_json(src / "faces_val.json", {"lindau_000000_000019_leftImg8bit.png": [[1, 1, 10, 10]]})
    code, text = run_cli(["anonymize", "--dataset", "cityscapes", "--root", src, "--region", "face",
                          "--region-param", "provider=file", "--region-param", "file=faces_val.json",
                          "--method", "mask_out", "--out", out, "--no-progress"], capsys)
    assert code == 2 and "names none of the" in text, text


@pytest.mark.slow
def test_synthetic_module_runs_as_a_script(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dataset_adapters.synthetic", str(tmp_path / "syn"), "--format",
                        "coco", "--train", "1", "--val", "0", "--size", "64", "96"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "syn" / "avanon_synthetic.json").is_file()


def test_a_stray_image_in_a_new_folder_of_the_split_is_left_out(dirs, capsys):
    """An image below the split's image root that no annotation names (here a folder of its own, with no record
    beside it) was never checked for people: it is not copied, and verify finds it if it appears."""
    src, out = dirs
    make_cityscapes(src)
    stray = src / "leftImg8bit/train/newcity/person.jpg"
    write_image(stray, seed=5)
    code, text = anonymize("cityscapes", src, out, capsys)
    assert code == 0 and "have no annotation and were left out" in text, text
    mirror = mirror_of(out, "cityscapes")
    assert not (mirror / "leftImg8bit/train/newcity/person.jpg").exists()
    assert verify_mirror(mirror).clean
    (mirror / "leftImg8bit/train/newcity").mkdir(parents=True)
    (mirror / "leftImg8bit/train/newcity/person.jpg").write_bytes(stray.read_bytes())
    assert any("never checked for people" in e for e in verify_mirror(mirror).errors)
