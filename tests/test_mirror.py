"""The mirror writer: tree and bytes, privacy on failure, resume, determinism, shards, refusals; and verify."""
import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapter_fixtures import make_cityscapes, make_coco
from avanon.mirror import process as process_mod
from avanon.mirror import writer as mirror_mod
from avanon.cli import main
from avanon.mirror.imageio import sha256_file
from avanon.mirror import MirrorError, read_manifest, write_mirror
from avanon.mirror.plan import make_jobs
from avanon.recipe import validate
from avanon.mirror.verify import verify_mirror
from dataset_adapters import build_adapter


def _recipe(root, out, adapter="cityscapes", region="body", method="mask_out", params=None, **extra):
    raw = {"name": "t", "dataset": {"adapter": adapter, "root": str(root)},
           "anonymize": [{"region": region, "method": method, "params": params or {}}],
           "output": {"root": str(out)}}
    raw.update(extra)
    return validate(raw, "test")


def _write(root, out, workers=1, shard=(0, 1), **kw):
    recipe = _recipe(root, out, **kw)
    adapter = build_adapter(recipe["dataset"]["adapter"], root, "train", **recipe["dataset"]["options"])
    (entry, job), = make_jobs(recipe, adapter)
    summary = write_mirror(adapter, job, workers=workers, shard=shard, progress=False,
                           run_info={"dataset": dict(recipe["dataset"], root=str(root))})
    return Path(job.out_dir), summary


def _tree(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
            and p.name not in ("run.json", "summary.json")}


@pytest.fixture
def cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    make_cityscapes(root)
    return root


def test_mirror_tree_annotations_identical_and_only_regions_change(cityscapes, tmp_path):
    out, summary = _write(cityscapes, tmp_path / "anon")
    assert out == tmp_path / "anon" / "cityscapes" / "body_mask_out"
    assert summary.failed == 0 and summary.anonymized == 2 and summary.copied == 1
    assert summary.skip_reasons["category:rider"] >= 1 and summary.skip_reasons["crowd"] >= 1
    for src in cityscapes.rglob("*"):
        rel = src.relative_to(cityscapes).as_posix()
        if src.is_file() and not rel.startswith("leftImg8bit/train"):
            assert (out / rel).read_bytes() == src.read_bytes(), rel
    lines = read_manifest(out)
    assert len(lines) == 3
    rel = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    line = lines[rel]
    assert line["status"] == "anonymized" and line["anonymized"] == ["24000"] or line["anonymized"]
    assert line["source_sha256"] == sha256_file(cityscapes / rel) and line["output_sha256"] == sha256_file(out / rel)
    assert line["method"] == "mask_out" and line["params"] == {"fill": 127} and isinstance(line["seed"], int)
    a = np.asarray(Image.open(cityscapes / rel))
    b = np.asarray(Image.open(out / rel))
    changed = (a != b).any(axis=2)
    assert changed.any()
    assert (b[changed] == 127).all()
    # the person polygon (10..20 x 10..30) is fully grey; far corners untouched
    assert (b[10:30, 10:20] == 127).all() and np.array_equal(a[:3, 40:], b[:3, 40:])
    report = verify_mirror(out)
    assert report.clean, report.errors
    assert report.instances_checked == summary.instances_anonymized


def test_resume_after_interruption_equals_uninterrupted_run(cityscapes, tmp_path, monkeypatch):
    ref, _ = _write(cityscapes, tmp_path / "ref", method="blur")
    real = mirror_mod.process_image
    calls = {"n": 0}

    def dies_on_second(job, record, write=True, previous=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(job, record, write, previous)

    monkeypatch.setattr(mirror_mod, "process_image", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        _write(cityscapes, tmp_path / "int", method="blur")
    monkeypatch.setattr(mirror_mod, "process_image", real)
    out, summary = _write(cityscapes, tmp_path / "int", method="blur")
    assert summary.resumed == 1
    assert _tree(out) == _tree(ref)
    # a third run has nothing left to do and changes nothing
    _, again = _write(cityscapes, tmp_path / "int", method="blur")
    assert again.resumed == 3 and _tree(out) == _tree(ref)


def test_deterministic_across_workers_and_shards(cityscapes, tmp_path):
    one, _ = _write(cityscapes, tmp_path / "w1", method="pixelate")
    two, _ = _write(cityscapes, tmp_path / "w2", method="pixelate", workers=2)
    assert _tree(one) == _tree(two)
    for k in range(2):
        sharded, _ = _write(cityscapes, tmp_path / "sh", method="pixelate", shard=(k, 2))
    assert sorted(p.name for p in sharded.glob("manifest-*")) == ["manifest-0of2.jsonl", "manifest-1of2.jsonl"]
    assert main(["merge", str(sharded)]) == 0
    assert _tree(sharded) == _tree(one)


def test_corrupt_image_fails_closed(cityscapes, tmp_path):
    rel = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    data = (cityscapes / rel).read_bytes()
    (cityscapes / rel).write_bytes(data[: len(data) // 3])  # truncated PNG
    out, summary = _write(cityscapes, tmp_path / "anon")
    assert summary.failed == 1 and summary.failures[0][0] == rel
    assert not (out / rel).exists()
    assert not list(out.rglob(".*tmp*"))
    report = verify_mirror(out)
    assert report.clean and any("failed and left out" in w for w in report.warnings)
    # an image recorded as failed must never sit in the mirror
    shutil.copyfile(cityscapes / rel, out / rel)
    assert any("recorded as failed but present" in e for e in verify_mirror(out).errors)


def test_wrong_size_mask_fails_closed(cityscapes, tmp_path):
    ids = cityscapes / "gtFine/train/zurich/zurich_000001_000019_gtFine_instanceIds.png"
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(ids)
    out, summary = _write(cityscapes, tmp_path / "anon")
    assert summary.failed == 1 and "annotation problems" in summary.failures[0][1]
    assert not (out / "leftImg8bit/train/zurich/zurich_000001_000019_leftImg8bit.png").exists()


def test_missing_image_of_an_annotation_fails_closed(tmp_path):
    root = tmp_path / "coco"
    make_coco(root)
    (root / "train2017" / f"{139:012d}.jpg").unlink()
    out, summary = _write(root, tmp_path / "anon", adapter="coco")
    assert summary.failed == 1 and "missing image file" in summary.failures[0][1]
    assert verify_mirror(out).clean


def test_refusals(cityscapes, tmp_path):
    with pytest.raises(MirrorError, match="inside the source dataset"):
        _write(cityscapes, cityscapes / "anon")
    _write(cityscapes, tmp_path / "anon")
    recipe = validate({"name": "t", "dataset": {"adapter": "cityscapes", "root": str(cityscapes)},
                       "output": {"root": str(tmp_path / "anon")},  # same directory, other settings
                       "anonymize": [{"region": "body", "method": "mask_out", "params": {"fill": 0},
                                      "name": "body_mask_out"}]}, "test")
    adapter = build_adapter("cityscapes", cityscapes, "train")
    (_, job), = make_jobs(recipe, adapter)
    with pytest.raises(MirrorError, match=r"other settings \(differ in: method_params\)"):
        write_mirror(adapter, job, progress=False)


def test_full_disk_stops_cleanly_and_resumes(cityscapes, tmp_path, monkeypatch):
    real = mirror_mod.atomic_write_bytes

    def full(path, data):
        if path.suffix == ".png":  # the disk fills up while images are written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(process_mod, "atomic_write_bytes", full)  # every image write goes through process._write
    with pytest.raises(MirrorError, match="No space left"):
        _write(cityscapes, tmp_path / "anon")
    monkeypatch.setattr(process_mod, "atomic_write_bytes", real)
    out, summary = _write(cityscapes, tmp_path / "anon")
    assert summary.failed == 0 and verify_mirror(out).clean


def test_verify_catches_tampering(cityscapes, tmp_path):
    out, _ = _write(cityscapes, tmp_path / "anon", method="blur")
    rel = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    # the original image put back (person in the clear)
    shutil.copyfile(cityscapes / rel, out / rel)
    errors = verify_mirror(out).errors
    assert any("differs from the hash" in e for e in errors)
    assert any("worst tile at" in e and "(instance " in e for e in errors)
    assert any("unchanged in the mirror" in e for e in errors)
    # an annotation file edited, a file missing
    out2, _ = _write(cityscapes, tmp_path / "anon2", method="blur")
    ann = next(out2.glob("gtFine/val/*/*_polygons.json"))
    ann.write_text(ann.read_text() + " ")
    (next(out2.glob("camera/**/*.json"))).unlink()
    errors = verify_mirror(out2).errors
    assert any("differs from the source" in e for e in errors) and any("missing from the mirror" in e for e in errors)
    # a pixel outside every region changed
    out3, _ = _write(cityscapes, tmp_path / "anon3", method="blur")
    img = np.asarray(Image.open(out3 / rel)).copy()
    img[0, 63] ^= 1
    Image.fromarray(img).save(out3 / rel)
    assert any("outside the regions" in e for e in verify_mirror(out3).errors)


def test_unannotated_images_are_left_out(cityscapes, tmp_path):
    stray = cityscapes / "leftImg8bit/train/aachen/aachen_000099_000019_leftImg8bit.png"
    shutil.copyfile(next(cityscapes.glob("leftImg8bit/train/aachen/*.png")), stray)
    # without gtFine the adapter records a problem for it, or skips it: either way never in the clear
    out, summary = _write(cityscapes, tmp_path / "anon")
    rel = stray.relative_to(cityscapes).as_posix()
    line = read_manifest(out).get(rel)
    assert not (out / rel).exists()
    assert (line and line["status"] == "failed") or summary.unannotated == 1


def test_coco_jpeg_mirror_and_exif_rotation(tmp_path):
    root = tmp_path / "coco"
    make_coco(root)
    # rotate image 139 by EXIF: raw pixels stored transposed, annotation in the displayed frame
    path = root / "train2017" / f"{139:012d}.jpg"
    shown = np.asarray(Image.open(path))
    raw = np.rot90(shown, k=1)  # orientation 6 displays raw rotated 90 degrees clockwise
    img = Image.fromarray(np.ascontiguousarray(raw))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, quality=100, subsampling=0, exif=exif.tobytes())
    out, summary = _write(root, tmp_path / "anon", adapter="coco", params={"fill": 0})
    assert summary.failed == 0
    from PIL import ImageOps
    with Image.open(out / "train2017" / path.name) as o:
        assert o.getexif().get(0x0112) == 6 and o.size == (48, 64)
        displayed = np.asarray(ImageOps.exif_transpose(o)).astype(int)
    # annotation 1001 is the polygon 5..25 x 5..40 in the displayed frame: black there
    assert displayed[8:37, 8:22].mean() < 8
    assert verify_mirror(out).clean


@pytest.mark.slow
def test_cli_anonymize_verify_inspect(cityscapes, tmp_path, capsys):
    rc = main(["anonymize", "--dataset", "cityscapes", "--root", str(cityscapes), "--region", "body",
               "--method", "blur", "--out", str(tmp_path / "anon"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "body_blur: done: 3 images (2 anonymized, 1 copied unchanged, 0 failed" in out
    assert main(["verify", str(tmp_path / "anon" / "cityscapes" / "body_blur")]) == 0
    assert "CLEAN" in capsys.readouterr().out
    rc = main(["inspect", "--dataset", "cityscapes", "--root", str(cityscapes), "--plot", str(tmp_path / "h.png"),
               "--json", str(tmp_path / "s.json")])
    assert rc == 0 and (tmp_path / "h.png").stat().st_size > 1000
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["images"] == 3 and stats["categories"]["person"] >= 3
    assert main(["anonymize", "--dataset", "cityscapes", "--root", str(cityscapes), "--region", "body",
                 "--method", "blur", "--out", str(cityscapes), "--no-progress"]) == 2
    assert "inside the source dataset" in capsys.readouterr().err
    # dry run writes nothing
    assert main(["anonymize", "--dataset", "cityscapes", "--root", str(cityscapes), "--region", "body",
                 "--method", "mask_out", "--out", str(tmp_path / "dry"), "--dry-run", "--no-progress"]) == 0
    assert not (tmp_path / "dry").exists()


def test_hardlink_mode_links_untouched_files_and_never_touches_the_source(cityscapes, tmp_path):
    before = {p: sha256_file(p) for p in cityscapes.rglob("*") if p.is_file()}
    out, summary = _write(cityscapes, tmp_path / "anon", output={"root": str(tmp_path / "anon"), "link": "hardlink"})
    assert summary.failed == 0
    after = {p: sha256_file(p) for p in cityscapes.rglob("*") if p.is_file()}
    assert before == after
    lines = read_manifest(out)
    for rel, line in lines.items():
        same_inode = (out / rel).stat().st_ino == (cityscapes / rel).stat().st_ino
        assert same_inode == (line["status"] == "copied"), rel
    ann = next(cityscapes.glob("gtFine/train/*/*_polygons.json")).relative_to(cityscapes)
    # annotations are copied, never linked: editing the mirror's annotations must not edit the source's
    assert (out / ann).stat().st_ino != (cityscapes / ann).stat().st_ino
    assert sha256_file(out / ann) == sha256_file(cityscapes / ann)
    assert verify_mirror(out).clean
