"""The streaming pipeline (avanon.mirror.stream): the same mirror as the per-image path, bit for bit on CPU (real
generators with random weights; HM and HM-LO), whatever the batch, worker count or shards; bounded memory; an
image whose crops fail fails alone; a run killed mid-stream resumes to the same mirror. Device, batch and pipeline
are runtime settings, not the mirror's identity."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from avanon.anonymizers.base import ANONYMIZERS, Anonymizer
from avanon.anonymizers.crops import paste
from avanon.anonymizers.waves import GenRequest, plan_waves, run_steps
from avanon.cli import main
from avanon.mirror import stream
from avanon.mirror.plan import MirrorJob

from adapter_fixtures import make_cityscapes

TESTS = Path(__file__).parent


# ------------------------------------------------------------------------------------------ a cheap generator
@ANONYMIZERS.register("test_stream_fill")
class StreamFill(Anonymizer):
    """A stand-in for a GPU generator with the streaming protocol: each instance is filled with a value computed
    from the CURRENT pixels of its clip box, so the result depends on the order of overlapping instances exactly
    as the realistic anonymizer's recursive stitching does. A forward pass holding a crop of the image with seed
    `fail_seed` raises."""

    name = "test_stream_fill"
    defaults = {"batch": 4, "fail_seed": None, "pipeline": "stream", "short": False}
    runtime_params = frozenset({"batch", "pipeline"})
    launched: list = []

    def use_stream(self) -> bool:
        return self._params["pipeline"] == "stream"

    def stream_batch(self) -> int:
        return self._params["batch"]

    def anonymize(self, image, regions, seed=0):  # the per-image path: every instance alone, in paste order
        return run_steps(self.steps(image, regions, seed, waves=False),
                         lambda request: self.collect(self.launch([request]))[0])

    def steps(self, image, regions, seed=0, *, waves=True, precut=None):
        out = image.copy()
        regions = [r for r in regions if r.image_mask.any()]
        groups = plan_waves([r.clip_box for r in regions]) if waves else [[i] for i in range(len(regions))]
        for wave in groups:
            crops = [out[r.clip_box[1]:r.clip_box[3], r.clip_box[0]:r.clip_box[2]] for r in (regions[i] for i in wave)]
            generated = yield GenRequest("fill", [regions[i] for i in wave], [c.astype(np.int64).sum() for c in crops],
                                         seed)
            for i, value in zip(wave, generated):
                r = regions[i]
                h, w = r.clip_box[3] - r.clip_box[1], r.clip_box[2] - r.clip_box[0]
                paste(out, r, np.full((h, w, 3), value, np.float32))
        return out

    def launch(self, requests, max_batch=None):
        n = sum(len(r.jobs) for r in requests)
        StreamFill.launched.append(n)
        if any(r.seed == self._params["fail_seed"] for r in requests):
            raise RuntimeError("simulated device failure")
        answers = [[(v * 7 + r.seed) % 251 for v in r.crops] for r in requests]
        if self._params["short"]:  # a broken generator: one crop missing from each answer
            answers = [a[:-1] for a in answers]
        return answers

    def collect(self, handle):
        return handle


def _manifest(mirror: Path) -> dict:
    return {line["file"]: line for line in map(json.loads, (mirror / "manifest.jsonl").read_text().splitlines())}


def _tree(mirror: Path) -> dict:
    return {str(p.relative_to(mirror)): p.read_bytes() for p in sorted(mirror.rglob("*"))
            if p.is_file() and p.name not in ("summary.json", "manifest.jsonl", "run.json")}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A few hundred tiny synthetic Cityscapes images (people overlap in some)."""
    root = tmp_path_factory.mktemp("syn") / "tiny"
    from dataset_adapters import build_adapter

    build_adapter("synthetic", root, "train", num_train=160, num_val=1, image_size=[48, 96])
    return root


def _fill(root, out, *extra, shard=None, workers=1):
    argv = ["anonymize", "--dataset", "synthetic", "--root", str(root), "--option", "num_train=160",
            "--option", "num_val=1", "--option", "image_size=[48, 96]", "--region", "body",
            "--method", "test_stream_fill", "--out", str(out), "--no-progress", "-q", "--workers", str(workers),
            "--name", "fill", *extra]
    if shard:
        argv += ["--shard", shard]
    return main(argv)


def test_stream_equals_per_image_and_batches_across_images(tiny_dataset, tmp_path):
    assert _fill(tiny_dataset, tmp_path / "seq", "--param", "pipeline=per_image") == 0
    StreamFill.launched.clear()
    assert _fill(tiny_dataset, tmp_path / "str", "--param", "batch=8") == 0
    seq, got = tmp_path / "seq" / "synthetic" / "fill", tmp_path / "str" / "synthetic" / "fill"
    assert _tree(seq) == _tree(got)
    lines = _manifest(got)
    assert sum(1 for line in lines.values() if line["status"] == "anonymized") > 100
    assert {k: v["output_sha256"] for k, v in _manifest(seq).items()} == \
        {k: v.get("output_sha256") for k, v in lines.items()}
    # batches hold crops of several images, never more than the batch size; some image needed several waves
    assert max(StreamFill.launched) == 8 and stream.STATS["batches"] < stream.STATS["images"]
    assert stream.STATS["crops"] == sum(len(v["anonymized"]) for v in lines.values())


def test_overlapping_people_keep_their_order():
    """Two overlapping instances of one image and a disjoint one of another: the overlapping pair runs in two
    waves, in paste order, and the result equals the sequential one."""
    from avanon.regions.base import Region

    def region(i, box):
        x0, y0, x1, y1 = box
        return Region(instance_id=i, kind="body", exp_box=box, crop_size=(y1 - y0, x1 - x0),
                      crop_mask=np.ones((y1 - y0, x1 - x0), bool), clip_box=box,
                      image_mask=np.ones((y1 - y0, x1 - x0), bool), area=(x1 - x0) * (y1 - y0))

    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    regions = [region("a", (5, 5, 25, 30)), region("b", (15, 10, 40, 35)), region("c", (45, 0, 58, 20))]
    anon = StreamFill({"batch": 8})
    assert plan_waves([r.clip_box for r in regions]) == [[0, 2], [1]]
    steps = anon.steps(image, regions, 3)
    first = next(steps)
    assert [j.instance_id for j in first.jobs] == ["a", "c"]
    second = steps.send(anon.collect(anon.launch([first]))[0])
    assert [j.instance_id for j in second.jobs] == ["b"]
    with pytest.raises(StopIteration) as stop:
        steps.send(anon.collect(anon.launch([second]))[0])
    assert np.array_equal(stop.value.value, anon.anonymize(image, regions, 3))


def test_bounded_memory(tiny_dataset, tmp_path):
    assert _fill(tiny_dataset, tmp_path / "w1", "--param", "batch=2") == 0
    assert stream.STATS["images"] > 100 and stream.STATS["max_active"] <= 4  # max(4, 2*batch, 2*workers)


def test_a_failing_forward_fails_only_its_image(tiny_dataset, tmp_path):
    assert _fill(tiny_dataset, tmp_path / "ok") == 0
    ok = _manifest(tmp_path / "ok" / "synthetic" / "fill")
    victim = next(line for line in ok.values() if line["status"] == "anonymized")
    assert _fill(tiny_dataset, tmp_path / "bad", "--param", f"fail_seed={victim['seed']}") == 1
    mirror = tmp_path / "bad" / "synthetic" / "fill"
    lines = _manifest(mirror)
    failed = [f for f, line in lines.items() if line["status"] == "failed"]
    assert failed == [victim["file"]] and "simulated device failure" in lines[victim["file"]]["error"]
    for f in failed:
        assert not (mirror / f).exists()  # never in the clear
    for f, line in lines.items():
        if f not in failed:
            assert line["output_sha256"] == ok[f].get("output_sha256")


def test_shards_with_other_batch_sizes_merge_into_the_single_process_mirror(tiny_dataset, tmp_path):
    assert _fill(tiny_dataset, tmp_path / "one") == 0
    assert _fill(tiny_dataset, tmp_path / "sh", "--param", "batch=2", shard="0/2") == 0
    assert _fill(tiny_dataset, tmp_path / "sh", "--param", "batch=8", "--param", "pipeline=per_image",
                 shard="1/2") == 0
    assert main(["merge", str(tmp_path / "sh" / "synthetic" / "fill")]) == 0
    one, merged = tmp_path / "one" / "synthetic" / "fill", tmp_path / "sh" / "synthetic" / "fill"
    assert _tree(one) == _tree(merged)
    strip = ("seed",)
    assert {f: {k: v for k, v in line.items() if k not in strip} for f, line in _manifest(one).items()} == \
        {f: {k: v for k, v in line.items() if k not in strip} for f, line in _manifest(merged).items()}


def test_killed_mid_stream_resumes_to_the_same_mirror(tiny_dataset, tmp_path):
    assert _fill(tiny_dataset, tmp_path / "ref") == 0
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        import test_stream  # registers the test anonymizer
        from avanon.mirror import process, stream
        from avanon.cli import main
        real, calls = process.finish_image, [0]
        def dying(*a, **k):
            calls[0] += 1
            if calls[0] == 40:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        process.finish_image = dying
        sys.exit(test_stream._fill({str(tiny_dataset)!r}, {str(tmp_path / 'int')!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=TESTS.parent, env=dict(os.environ))
    assert proc.returncode == -signal.SIGKILL
    mirror = tmp_path / "int" / "synthetic" / "fill"
    done = len((mirror / "manifest.jsonl").read_text().splitlines())
    assert 0 < done < len(_manifest(tmp_path / "ref" / "synthetic" / "fill"))
    assert _fill(tiny_dataset, tmp_path / "int") == 0
    assert _tree(mirror) == _tree(tmp_path / "ref" / "synthetic" / "fill")
    assert main(["verify", str(mirror), "--source", str(tiny_dataset)]) == 0


def test_runtime_parameters_are_not_the_mirror_identity():
    base = dict(source_root="/s", out_dir="/o", region="body", region_params={}, filters={},
                target_categories=("person",), method="realistic", seed=0)
    a = MirrorJob(**base, method_params={"weights": "random", "device": "cpu", "batch": 1, "pipeline": "per_image"})
    b = MirrorJob(**base, method_params={"weights": "random", "device": "cuda:3", "batch": 16, "pipeline": "stream",
                                         "channels_last": True})
    c = MirrorJob(**base, method_params={"weights": "random", "precision": "bf16"})
    assert a.settings_hash() == b.settings_hash() and a.tools_key() != b.tools_key()
    assert a.settings_hash() != c.settings_hash()
    from avanon.anonymizers import build_anonymizer

    assert build_anonymizer("realistic", {"precision": "bf16"}).tag.endswith("_bf16")
    assert "device" not in a.settings()["method_params"]


# ------------------------------------------------------------------------------------------ real generators
@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cs") / "cs"
    make_cityscapes(root)
    return root


@pytest.mark.parametrize("params,workers", [
    (["region_model=body_nocse288"], "2"),
    (["region_model=body_nocse288", "histogram=hm"], "1"),
    (["region_model=body_nocse288", "histogram=hmlo", "hmlo_steps=2"], "1"),
])
def test_realistic_stream_is_bit_identical_to_the_per_image_path(cityscapes, tmp_path, params, workers):
    """The stream's CPU stage in worker processes (precut crops), its device stage in this process."""
    def run(name, *extra, workers="1"):
        argv = ["anonymize", "--workers", workers, "--dataset", "cityscapes", "--root", str(cityscapes), "--region", "body", "--method",
                "realistic", "--param", "weights=random", "--param", "device=cpu", "--out", str(tmp_path / name),
                "--name", "r", "--no-progress", "-q"]
        for p in [*params, *extra]:
            argv += ["--param", p]
        assert main(argv) == 0
        return tmp_path / name / "cityscapes" / "r"

    per_image = run("per", "pipeline=per_image")
    streamed = run("stream", "pipeline=stream", "batch=4", workers=workers)
    assert stream.STATS["images"] == 2 and stream.STATS["max_batch_crops"] >= 2  # crops of two images together
    assert stream.STATS["requests"] > stream.STATS["images"]  # overlapping people: an image needed several waves
    assert _tree(per_image) == _tree(streamed)
    runtime = json.loads((streamed / "summary.json").read_text())["this_run"]["runtime"]
    assert runtime["pipeline_used"] == "stream" and runtime["device_used"] == "cpu"


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_suite.sh)")
def test_realistic_stream_on_cuda_agrees_with_cpu_to_rounding(cityscapes, tmp_path):
    """On CUDA the stream batches crops of several images: the pixels agree with the CPU's to float rounding (a
    few grey levels after the generator's many layers), not bit for bit; summary.json says so."""
    import cv2

    def run(name, device, *extra):
        argv = ["anonymize", "--dataset", "cityscapes", "--root", str(cityscapes), "--region", "body", "--method",
                "realistic", "--param", "weights=random", "--param", f"device={device}", "--param",
                "region_model=body_nocse288", "--out", str(tmp_path / name), "--name", "r", "--no-progress", "-q"]
        for p in extra:
            argv += ["--param", p]
        assert main(argv) == 0
        return tmp_path / name / "cityscapes" / "r"

    cpu = run("cpu", "cpu", "pipeline=per_image")
    gpu = run("gpu", "cuda", "pipeline=stream", "batch=4")
    runtime = json.loads((gpu / "summary.json").read_text())["this_run"]["runtime"]
    assert runtime["device_used"].startswith("cuda") and "last bits" in runtime["note"]
    assert main(["verify", str(gpu), "--no-progress"]) == 0  # recomputed per image: equal to CUDA rounding
    for f, line in _manifest(cpu).items():
        if line["status"] != "anonymized":
            continue
        a = cv2.imread(str(cpu / f)).astype(int)
        b = cv2.imread(str(gpu / f)).astype(int)
        assert np.abs(a - b).mean() < 1.0 and np.percentile(np.abs(a - b), 99.9) <= 8


def test_verify_allows_cuda_rounding_but_not_a_leak():
    """Pixels made on CUDA are compared per tile within DEVICE_TILE_TOLERANCE; an original pasted back is not."""
    from avanon.mirror.verify import VerifyReport, _compare_tiles

    rng = np.random.default_rng(0)
    want = rng.integers(20, 230, (64, 64, 3), dtype=np.uint8)
    source = rng.integers(20, 230, (64, 64, 3), dtype=np.uint8)
    owner = np.zeros((64, 64), np.int32)
    noisy = (want.astype(int) + rng.integers(-2, 3, want.shape)).clip(0, 255).astype(np.uint8)  # rounding
    leak = want.copy()
    leak[16:32, 16:32] = source[16:32, 16:32]  # a face-sized patch of the original
    for got, rounded, ok in ((noisy, False, False), (noisy, True, True), (leak, True, False)):
        report = VerifyReport(mirror="m")
        _compare_tiles("x.png", got, want, owner, [], True, report, rounded)
        assert (not report.errors) == ok, (rounded, report.errors)


def test_an_answer_missing_a_crop_fails_the_image_instead_of_leaving_a_person(tiny_dataset, tmp_path):
    """A generator that returns fewer crops than it was given must not leave the missing person unpasted (in the
    clear): the scheduler checks every answer's length and fails the image."""
    assert _fill(tiny_dataset, tmp_path / "short", "--param", "short=true") == 1
    mirror = tmp_path / "short" / "synthetic" / "fill"
    lines = _manifest(mirror)
    needing = [f for f, line in lines.items() if line.get("anonymized")]
    assert needing and all(lines[f]["status"] == "failed" and "crops for a request" in lines[f]["error"]
                           for f in needing)
    assert not any((mirror / f).exists() for f in needing)
