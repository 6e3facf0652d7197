"""verify sees a face-sized leak: on real-looking content (scikit-image's astronaut pasted into a street as a
person), for every method and for JPEG and PNG mirrors, a 16x16 px original patch restored inside the person or a
16x16 patch painted in the background (with the manifest hash fixed, as a writer bug would) is an error that names
the location and the instance; the clean mirrors verify."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from skimage import data
from skimage.transform import resize

from avanon.cli import main
from avanon.mirror.imageio import sha256_bytes
from avanon.mirror.verify import verify_mirror

H, W = 240, 320
PERSON = (100, 30, 196, 222)  # x0, y0, x1, y1 of the pasted astronaut


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    street = np.clip(rng.normal(120, 25, (H, W, 3)), 0, 255).astype(np.uint8)
    street[H // 2:] = np.clip(street[H // 2:].astype(int) - 40, 0, 255)
    x0, y0, x1, y1 = PERSON
    person = (resize(data.astronaut()[20:420, 130:330], (y1 - y0, x1 - x0), anti_aliasing=True) * 255).astype(np.uint8)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = ((xx - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2 + ((yy - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2 <= 1
    img = street.copy()
    img[mask] = person[mask[y0:y1, x0:x1]]
    return img, mask


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("astro")
    images, anns = [], []
    for i, suffix in enumerate((".jpg", ".png"), start=1):
        img, mask = _scene(i)
        (root / "train2017").mkdir(exist_ok=True)
        Image.fromarray(img).save(root / "train2017" / f"{i:06d}{suffix}", **({"quality": 95} if suffix == ".jpg" else {}))
        images.append({"id": i, "file_name": f"{i:06d}{suffix}", "width": W, "height": H})
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        anns.append({"id": 10 + i, "image_id": i, "category_id": 1, "iscrowd": 0, "area": int(mask.sum()),
                     "bbox": [0, 0, 0, 0], "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}})
    (root / "annotations").mkdir()
    (root / "annotations" / "person_keypoints_train2017.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}))
    return root


METHODS = {
    "mask_out": [],
    "blur": [],
    "pixelate": ["--param", "size=8"],
    "realistic": ["--param", "weights=random", "--param", "device=cpu", "--param", "region_model=body_nocse288"],
}


@pytest.fixture(scope="module")
def mirrors(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrors")
    made = {}
    for method, params in METHODS.items():
        rc = main(["anonymize", "--dataset", "coco", "--root", str(dataset), "--region", "body", "--method", method,
                   *params, "--out", str(out), "--no-progress", "-q"])
        assert rc == 0, method
        made[method] = next(p for p in (out / "coco").iterdir() if p.name.startswith(f"body_{method}"))
    return made


def _encode(pixels: np.ndarray, suffix: str) -> bytes:
    bio = io.BytesIO()
    if suffix == ".jpg":
        Image.fromarray(pixels).save(bio, format="JPEG", quality=100, subsampling=0)
    else:
        Image.fromarray(pixels).save(bio, format="PNG")
    return bio.getvalue()


def _plant(mirror: Path, source: Path, rel: str, patch) -> None:
    """Replace the mirror's image by `patch(mirror pixels, source pixels)` re-encoded, and fix its manifest hash."""
    got = np.asarray(Image.open(mirror / rel).convert("RGB")).copy()
    src = np.asarray(Image.open(source / rel).convert("RGB"))
    patch(got, src)
    blob = _encode(got, Path(rel).suffix)
    (mirror / rel).write_bytes(blob)
    lines = [json.loads(t) for t in (mirror / "manifest.jsonl").read_text().splitlines()]
    for line in lines:
        if line["file"] == rel:
            line["output_sha256"] = sha256_bytes(blob)
    (mirror / "manifest.jsonl").write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))


def _most_changed_patch(mirror: Path, source: Path, rel: str, mask: np.ndarray) -> tuple[int, int]:
    """Top-left of the 16x16 window inside the person where the method changed the most (a textured spot: the one
    a leak would show), on the 8-px grid."""
    got = np.asarray(Image.open(mirror / rel).convert("RGB")).astype(int)
    src = np.asarray(Image.open(source / rel).convert("RGB")).astype(int)
    diff = np.abs(got - src).mean(axis=-1)
    best, at = -1.0, None
    for y in range(0, H - 16, 8):
        for x in range(0, W - 16, 8):
            if mask[y:y + 16, x:x + 16].all() and diff[y:y + 16, x:x + 16].mean() > best:
                best, at = diff[y:y + 16, x:x + 16].mean(), (x, y)
    return at


def _restore_at(x, y):
    def restore(got, src):
        got[y:y + 16, x:x + 16] = src[y:y + 16, x:x + 16]
    return restore


def _paint(got, src):
    got[8:24, 16:32] = 0


@pytest.mark.parametrize("method", list(METHODS))
def test_planted_leaks_are_caught_and_located(method, mirrors, dataset, tmp_path):
    """Two tampered copies of each mirror, so that each of the JPEG and the PNG image gets both kinds of leak:
    copy A restores a patch in the JPEG and paints the PNG, copy B the other way round."""
    import shutil

    clean = mirrors[method]
    assert verify_mirror(clean).clean, verify_mirror(clean).errors
    rels = {".jpg": "train2017/000001.jpg", ".png": "train2017/000002.png"}
    for restored_suffix, painted_suffix in ((".jpg", ".png"), (".png", ".jpg")):
        copy = tmp_path / f"restored{restored_suffix}"
        shutil.copytree(clean, copy)
        rel = rels[restored_suffix]
        index = 1 if restored_suffix == ".jpg" else 2
        x, y = _most_changed_patch(copy, dataset, rel, _scene(index)[1])
        _plant(copy, dataset, rel, _restore_at(x, y))
        _plant(copy, dataset, rels[painted_suffix], _paint)
        report = verify_mirror(copy)
        tiles = {t["file"]: t for t in report.worst_tiles}
        assert any(rel in e and f"(instance {10 + index})" in e for e in report.errors), report.errors
        assert x <= tiles[rel]["x"] < x + 16 and y <= tiles[rel]["y"] < y + 16
        painted = rels[painted_suffix]
        assert any(painted in e and "(outside the regions)" in e for e in report.errors), report.errors
        assert 16 <= tiles[painted]["x"] < 32 and 8 <= tiles[painted]["y"] < 24
