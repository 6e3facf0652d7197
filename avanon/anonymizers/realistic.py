"""Realistic anonymization: inpainting with DeepPrivacy2's pretrained generators (docs/reference.md §3-§5).

    build_anonymizer("realistic", {"histogram": "hm"}).anonymize(image, regions, seed)

Generators (``avanon.generators``; weights via ``avanon.generators.weights.resolve``):

* faces: ``face_fdf128`` (FDF128 U-Net StyleGAN, the paper's face model) on the Region's FDF128 crop;
* bodies: ``body_triagan288`` (keypoint-guided TriA-GAN, 288×160) for instances with at least one visible keypoint,
  ``body_nocse288`` (mask-only StyleGAN U-Net) for the others (``region_model: auto``, as the paper);
* "Realistic + HR faces" (``hr_faces: true``): the reference's COCO refinement (§3.5), see below.

Pipeline per instance, as the reference's ``Anonymizer.anonymize_detections`` (§3.1-3.2): cut the expanded box
(zero padding) from the CURRENT image, resize to the generator's resolution (the reference's filters,
``crops.resize_to_crop``), normalise to [-1, 1]; ``mask`` = NOT crop_mask (1 = keep), ``condition = img·mask``;
TriA-GAN also gets ``maskrcnn_mask`` = NOT the undilated crop mask (1 = background), the crop-relative keypoints and
their joint map. ``G(..., w)["img"]`` (composited: known pixels returned as they are), ``(x+1)/2`` clamped ×255,
optional HM (histogram.py), resize back to the expanded box (bicubic + antialias), paste only where image_mask
(rounded once, the base class's paste). Regions arrive in paste order (ascending area) and each one sees the
results of the ones before it: recursive stitching.

Batching (beyond the reference, which runs every instance alone; ``batch``, default ``auto`` = on CUDA only, as
on CPU a batch is not faster per instance): instances whose clip boxes (expanded box ∩ image) do not overlap cannot
see each other's pixels, so they form waves (:func:`plan_waves`; overlapping pairs keep their order) and a wave runs
in one forward pass per generator. :meth:`RealisticAnonymizer.steps` yields the waves one by one, so the mirror's
streaming pipeline (avanon.mirror.stream) batches the waves of many images together. Bit-identical to the
sequential result on CPU (tests): the style affines run row by row (a batched GEMM rounds differently from a
batch-1 GEMV); on CUDA, cuDNN picks kernels per batch size, so results agree to float rounding only.

HM / HM-LO (histogram.py) as the reference's HistogramMatchAnonymizer / LatentHistogramMatchAnonymizer. The
reference's HM needs a person segmentation (maskrcnn_mask) and so works for bodies only; here faces use their
face-box crop mask in its place. HM-LO optimises the instances of a batch together with a per-instance stop.

Latents (latents.py): per instance from a generator seeded by (per-image seed, instance id), so results do not
depend on worker count, order or batching. ``truncation: auto`` is the reference's dataset-script setting:
multi-modal truncation (t = 0) for bodies, unimodal (t = 0, i.e. w_avg for everyone) for faces as in the COCO and
Cityscapes face scripts (BDD100K faces used multi-modal: set ``truncation: multimodal``).

HR faces (§3.5, ``tools/anonymization/coco/refine_faces.py``): after all faces are anonymized with FDF128, the
faces passing the size criterion are re-anonymized, in ascending area order, with FDF256 on the FDF128 result:
expanded box = the simple expansion (square of side 1.4·max(w, h) centred on the face box, may leave the image),
256×256 crop, face-box mask, w = w_avg (truncation 0, unimodal), as the script. Criterion, ``hr_criterion``:

* ``effective`` (default): what the reference actually computes. It calls the FDF expansion with the image shape
  of an HWC array, i.e. (W, 3); its assertions fail and it falls back to the simple expansion by 0.7, so a face is
  refined when (side of the square 1.7·max(w, h) centred on the box, int-rounded as the reference)² >= 128².
* ``fdf128``: the intended rule, the FDF128 expanded box (the Region's exp_box) has area >= 128².

Weights: ``weights: null`` looks every checkpoint up in the cache (avanon.generators.weights.resolve); a mapping
``{generator: path}`` names files per generator (``"<generator>.w_centers": path`` a centres sidecar); a string is a
directory; ``"random"``: random generators from a fixed seed (tests and demos; in the tag). The writer calls
:meth:`RealisticAnonymizer.check_weights` (kind) before any image; generators load lazily, cached per process.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Generator, Mapping, Optional, Sequence

import numpy as np
import torch

from avanon.anonymizers.base import (ANONYMIZERS, Anonymizer, AnonymizerConfigError, check_choice, check_int,
                                     check_positive)
from avanon.anonymizers.crops import (box_size, cut_pad, from_unit, paste, resize_from_crop, resize_to_crop,
                                      to_unit)
from avanon.anonymizers.histogram import HM_SIGMA, histogram_match, hmlo_optimize
from avanon.anonymizers.waves import (  # noqa: F401  (re-exported)
    EFFECTIVE_HR_EXPANSION, FDF256_CROP, FDF256_EXPANSION, HR_CRITERIA, HR_MIN_AREA, boxes_overlap, fdf256_region, hr_qualifies,
    GenRequest, plan_waves, run_steps,
)
from avanon.anonymizers.generator_cache import (  # noqa: F401  (re-exported)
    _CACHE, _CACHE_LOCK, clear_cache, prepare_module, random_generator,
)
from avanon.anonymizers.latents import TRUNCATION_MODES, load_centers, resolve_device, sample_w
from avanon.regions.base import Region

FACE_MODELS = ("face_fdf128", "face_fdf256")
BODY_MODELS = ("body_triagan288", "body_nocse288")
GENERATORS = FACE_MODELS + BODY_MODELS
REGION_MODELS = ("auto",) + GENERATORS
MODEL_KIND = {m: "face" for m in FACE_MODELS} | {m: "body" for m in BODY_MODELS}
CROP_SIZE = {"face_fdf128": (128, 128), "face_fdf256": FDF256_CROP, "body_triagan288": (288, 160),
             "body_nocse288": (288, 160)}
HISTOGRAM_MODES = ("none", "hm", "hmlo")
PRECISIONS = ("fp32", "bf16", "fp16")
PIPELINES = ("auto", "stream", "per_image")
DEFAULT_MAX_BATCH = 16
RANDOM = "random"
SUFFIX_CENTERS = ".w_centers"


# ----------------------------------------------------------------------------------------------------- jobs
@dataclass
class _Job:
    region: Region  # the geometry used (an FDF256 region for HR faces)
    model: str
    truncation: tuple  # (mode, value)
    salt: str = ""


@dataclass
class _Crop:
    inputs: dict
    real: np.ndarray  # uint8 crop at the generator's resolution
    undilated: np.ndarray  # bool person mask in crop space (HM)
    extra: dict = field(default_factory=dict)


def _check_bool(owner: str, key: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise AnonymizerConfigError(f"{owner}: parameter {key!r} must be true or false, got {value!r}")
    return bool(value)


def _check_number(owner: str, key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or not lo <= value <= hi:
        raise AnonymizerConfigError(f"{owner}: parameter {key!r} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


@ANONYMIZERS.register("realistic")
class RealisticAnonymizer(Anonymizer):
    """DeepPrivacy2-compatible realistic anonymization (module docstring). Params:

    region_model  auto | face_fdf128 | face_fdf256 | body_triagan288 | body_nocse288 (one generator for every
                  region of its kind; triagan gets empty keypoint maps for instances without keypoints)
    hr_faces      false | true: "Realistic + HR faces" (FDF256 refinement of large faces)
    hr_criterion  effective (default, the reference's actual rule) | fdf128 (the intended one)
    weights       null (cache) | {generator: path, "<generator>.w_centers": path} | directory | "random"
    truncation    auto (bodies multimodal, faces unimodal) | multimodal | unimodal | none
    truncation_value  t in [0, 1] for multimodal / unimodal (default 0, the reference's); null for none
    histogram     none | hm | hmlo;  hm_sigma (10);  hmlo_steps (100), hmlo_threshold (0.02), hmlo_lr (1e-3)
    precision     fp32 (default) | bf16 | fp16: autocast of the generator (changes pixels: part of the mirror's
                  identity and its tag)
    Runtime parameters (how it runs, not what it writes; left out of the mirror's identity, so shards with other
    devices or batch sizes join one mirror; on CUDA, results agree with CPU and across batch sizes to float
    rounding only):
    device        auto | cpu | cuda[:i]
    batch         auto (default: true on CUDA, false on CPU, where batching measured slower per instance) |
                  true (waves of non-overlapping instances, at most 16 per forward) | false (batch 1, the
                  reference) | an integer maximum batch size; the output does not depend on it on CPU
    channels_last auto (CUDA only) | true | false: the generators' memory format
    pipeline      auto (stream on CUDA) | stream | per_image: how the mirror writer runs it (avanon.mirror.stream:
                  crops of many images batched together, CPU work in worker processes)
    """

    name = "realistic"
    defaults = {
        "region_model": "auto",
        "hr_faces": False,
        "hr_criterion": "effective",
        "weights": None,
        "truncation": "auto",
        "truncation_value": None,
        "histogram": "none",
        "hm_sigma": HM_SIGMA,
        "hmlo_steps": 100,
        "hmlo_threshold": 0.02,
        "hmlo_lr": 1e-3,
        "precision": "fp32",
        "device": "auto",
        "batch": "auto",
        "channels_last": "auto",
        "pipeline": "auto",
    }
    runtime_params = frozenset({"device", "batch", "channels_last", "pipeline"})

    def __init__(self, params: Optional[Mapping[str, Any]] = None):
        super().__init__(params)
        self._paths: dict[str, Any] = {}
        self._generators: dict[str, torch.nn.Module] = {}
        self.last_hmlo = []  # HMLOResult of every HM-LO batch of the last anonymize() call (diagnostics, tests)
        # Construction validates parameters only (recipes validate without the files); the mirror writer calls
        # check_weights(kind) before any image, so a run without its weights stops before any work.

    # ------------------------------------------------------------------------------------------------- params
    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        n = self.name
        p = dict(params)
        p["region_model"] = check_choice(n, "region_model", p["region_model"], REGION_MODELS)
        p["hr_faces"] = _check_bool(n, "hr_faces", p["hr_faces"])
        p["hr_criterion"] = check_choice(n, "hr_criterion", p["hr_criterion"], HR_CRITERIA)
        if p["hr_faces"] and p["region_model"] not in ("auto", "face_fdf128"):
            raise AnonymizerConfigError(f"{n}: hr_faces refines FDF128 faces; it needs region_model auto or "
                                        f"face_fdf128, got {p['region_model']!r}")
        p["weights"] = self._check_weights_param(p["weights"])
        p["truncation"] = check_choice(n, "truncation", p["truncation"], ("auto",) + TRUNCATION_MODES)
        t = p["truncation_value"]
        if p["truncation"] == "none":
            if t is not None:
                raise AnonymizerConfigError(f"{n}: truncation 'none' takes no truncation_value (got {t!r})")
        else:
            p["truncation_value"] = 0.0 if t is None else _check_number(n, "truncation_value", t, 0.0, 1.0)
        p["histogram"] = check_choice(n, "histogram", p["histogram"], HISTOGRAM_MODES)
        p["hm_sigma"] = check_positive(n, "hm_sigma", p["hm_sigma"])
        p["hmlo_steps"] = check_int(n, "hmlo_steps", p["hmlo_steps"], 1)
        p["hmlo_threshold"] = _check_number(n, "hmlo_threshold", p["hmlo_threshold"], 0.0, float("inf"))
        p["hmlo_lr"] = check_positive(n, "hmlo_lr", p["hmlo_lr"])
        device = p["device"]
        if not isinstance(device, str) or not (device in ("auto", "cpu") or device.startswith("cuda")):
            raise AnonymizerConfigError(f"{n}: parameter 'device' must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}")
        p["precision"] = check_choice(n, "precision", p["precision"], PRECISIONS)
        if p["channels_last"] != "auto":
            p["channels_last"] = _check_bool(n, "channels_last", p["channels_last"])
        p["pipeline"] = check_choice(n, "pipeline", p["pipeline"], PIPELINES)
        batch = p["batch"]
        if batch == "auto":
            pass
        elif isinstance(batch, (bool, np.bool_)):
            p["batch"] = bool(batch)
        else:
            p["batch"] = check_int(n, "batch", batch, 1)
        return p

    def _check_weights_param(self, weights: Any) -> Any:
        n = self.name
        if weights is None or weights == RANDOM:
            return weights
        if isinstance(weights, str):
            if not weights.strip():
                raise AnonymizerConfigError(f"{n}: parameter 'weights' must not be empty")
            return weights
        if isinstance(weights, Mapping):
            out = {}
            allowed = set(GENERATORS) | {g + SUFFIX_CENTERS for g in GENERATORS}
            for key, value in weights.items():
                if key not in allowed:
                    raise AnonymizerConfigError(f"{n}: parameter 'weights' has unknown key {key!r}; known: "
                                                f"{', '.join(GENERATORS)} (and '<generator>{SUFFIX_CENTERS}')")
                if value is not None and (not isinstance(value, str) or not value.strip()):
                    raise AnonymizerConfigError(f"{n}: weights[{key!r}] must be a path or null, got {value!r}")
                out[key] = value
            return out
        raise AnonymizerConfigError(f"{n}: parameter 'weights' must be null, 'random', a directory or a mapping "
                                    f"generator -> path, got {weights!r}")

    @property
    def tag(self) -> str:
        p, d = self._params, self.defaults
        tag = self.name
        if p["region_model"] != "auto":
            tag += "_" + p["region_model"]
        if p["hr_faces"]:
            tag += "_hr_faces" + ("" if p["hr_criterion"] == "effective" else f"_{p['hr_criterion']}")
        if p["truncation"] != "auto":
            tag += f"_trunc_{p['truncation']}"
        if p["truncation"] != "none" and p["truncation_value"] != 0.0:
            tag += f"_t{p['truncation_value']:g}"
        if p["histogram"] == "hm":
            tag += "_hm" + ("" if p["hm_sigma"] == d["hm_sigma"] else f"_sigma{p['hm_sigma']:g}")
        elif p["histogram"] == "hmlo":
            tag += "_hmlo"
            if p["hmlo_steps"] != d["hmlo_steps"]:
                tag += f"_steps{p['hmlo_steps']}"
            if p["hmlo_threshold"] != d["hmlo_threshold"]:
                tag += f"_thr{p['hmlo_threshold']:g}"
            if p["hmlo_lr"] != d["hmlo_lr"]:
                tag += f"_lr{p['hmlo_lr']:g}"
        if p["precision"] != "fp32":
            tag += "_" + p["precision"]
        if p["weights"] == RANDOM:
            tag += "_randomweights"
        return tag

    # ------------------------------------------------------------------------------------------------- weights
    def models_for(self, kind: str) -> list[str]:
        """The generators regions of `kind` ("face" | "body") may need with these params."""
        rm = self._params["region_model"]
        if rm != "auto":
            if MODEL_KIND[rm] != kind:
                return []
            return [rm] + (["face_fdf256"] if self._params["hr_faces"] else [])
        if kind == "face":
            return ["face_fdf128"] + (["face_fdf256"] if self._params["hr_faces"] else [])
        return ["body_triagan288", "body_nocse288"]

    def _explicit_path(self, model: str) -> Optional[str]:
        w = self._params["weights"]
        if isinstance(w, str):
            return w
        if isinstance(w, Mapping):
            return w.get(model)
        return None

    def _resolve(self, model: str):
        if model in self._paths:
            return self._paths[model]
        from avanon.generators.weights import resolve

        path = resolve(model, self._explicit_path(model))
        self._paths[model] = path
        return path

    def check_weights(self, kind: Optional[str] = None) -> None:
        """Raise avanon.generators.weights.WeightsError unless every checkpoint regions of `kind` (default: both kinds that
        region_model allows) may need is present and verified. Free for weights 'random'."""
        if self._params["weights"] == RANDOM:
            return
        from avanon.generators.weights import WeightsError

        kinds = [kind] if kind else ["face", "body"]
        errors = []
        for k in kinds:
            for model in self.models_for(k):
                try:
                    self._resolve(model)
                except WeightsError as exc:
                    errors.append(f"[{model}, needed for {k} regions] {exc}")
        if errors:
            raise WeightsError(f"{self.name}: missing checkpoint(s):\n" + "\n".join(errors))

    def _needs_centers(self, model: str) -> bool:
        """Whether jobs on `model` use multi-modal truncation (the HR refinement always uses w_avg)."""
        if model == "face_fdf256" and self._params["hr_faces"]:
            return False
        return self._truncation(MODEL_KIND[model])[0] == "multimodal"

    def _centers_path(self, model: str) -> Optional[str]:
        """The default centres sidecar of `model` in the weights cache, if it exists."""
        from avanon.generators.weights import centers_path

        p = centers_path(model)
        return str(p) if p.is_file() else None

    def _device(self) -> torch.device:
        return resolve_device(self._params["device"])

    def generator(self, model: str) -> torch.nn.Module:
        """The loaded generator `model` (eval mode, on the device), cached per process."""
        if model in self._generators:
            return self._generators[model]
        device = self._device()
        needs_centers = self._needs_centers(model)
        if self._params["weights"] == RANDOM:
            cl = self._channels_last(device)
            key = (model, RANDOM, None, str(device), cl)
            with _CACHE_LOCK:
                if key not in _CACHE:
                    _CACHE[key] = prepare_module(random_generator(model), device, cl)
        else:
            from avanon.generators import load_generator
            from avanon.generators.weights import WeightsError

            path = self._resolve(model)
            explicit = self._params["weights"].get(model + SUFFIX_CENTERS) \
                if isinstance(self._params["weights"], Mapping) else None
            centers = (explicit or self._centers_path(model)) if needs_centers else None
            cl = self._channels_last(device)
            key = (model, str(path), centers, str(device), cl)
            with _CACHE_LOCK:
                if key not in _CACHE:
                    G = load_generator(model, path)
                    # an explicitly named centres file wins; the default sidecar only fills a checkpoint without
                    if centers is not None and (explicit or not G.style_net.has_w_centers):
                        G.style_net.set_w_centers(load_centers(centers))
                    if needs_centers and not G.style_net.has_w_centers:
                        raise WeightsError(
                            f"{self.name}: multi-modal truncation needs the k-means centres of w for {model}, and "
                            f"{path} has none. Compute them once with `avanon weights compute-centers {model}` "
                            f"(a sidecar file in the weights cache, picked up automatically), or name a centres "
                            f"file in weights['{model}{SUFFIX_CENTERS}'], or use truncation 'unimodal'.")
                    _CACHE[key] = prepare_module(G, device, cl)
        self._generators[model] = _CACHE[key]
        return self._generators[model]

    def prepare(self, kind: Optional[str] = None) -> None:
        """Load the generators of `kind` (default: both) now instead of at the first image."""
        for k in ([kind] if kind else ["face", "body"]):
            for model in self.models_for(k):
                self.generator(model)

    # ------------------------------------------------------------------------------------------------- planning
    def _truncation(self, kind: str) -> tuple[str, Optional[float]]:
        mode = self._params["truncation"]
        if mode == "auto":
            mode = "multimodal" if kind == "body" else "unimodal"
        return mode, (None if mode == "none" else self._params["truncation_value"])

    def _model_for(self, region: Region) -> str:
        rm = self._params["region_model"]
        if rm != "auto":
            if MODEL_KIND[rm] != region.kind:
                raise ValueError(f"region {region.instance_id}: region_model {rm} cannot anonymize a "
                                 f"{region.kind} region")
            return rm
        if region.kind == "face":
            return "face_fdf128"
        if region.kind == "body":
            kp = region.keypoints
            has_kp = kp is not None and bool((np.asarray(kp, dtype=np.float32).reshape(-1, 3)[:, 2] > 0).any())
            return "body_triagan288" if has_kp else "body_nocse288"
        raise ValueError(f"region {region.instance_id}: unknown region kind {region.kind!r}")

    def _primary_jobs(self, regions: Sequence[Region], imshape) -> list[_Job]:
        jobs = []
        for r in regions:
            model = self._model_for(r)
            geom = r
            if model == "face_fdf256":
                geom = fdf256_region(r, imshape)
                if geom is None:
                    raise ValueError(f"region {r.instance_id}: degenerate face box for the FDF256 crop")
            jobs.append(_Job(geom, model, self._truncation(r.kind)))
        return jobs

    def _hr_jobs(self, regions: Sequence[Region], imshape) -> list[_Job]:
        jobs = []
        for r in regions:
            if r.kind != "face" or not hr_qualifies(r, self._params["hr_criterion"]):
                continue
            geom = fdf256_region(r, imshape)
            if geom is not None and geom.image_mask.any():
                # refine_faces.py: truncation_value=0, multi_modal_truncation=False -> w_avg
                jobs.append(_Job(geom, "face_fdf256", ("unimodal", 0.0), salt="fdf256"))
        return jobs

    # ------------------------------------------------------------------------------------------------- running
    def anonymize(self, image: np.ndarray, regions: Sequence[Region], seed: int = 0) -> np.ndarray:
        self.last_hmlo = []
        max_batch = self._max_batch()
        return run_steps(self.steps(image, regions, seed, waves=max_batch > 1),
                         lambda request: self.collect(self.launch([request], max_batch))[0])

    def steps(self, image: np.ndarray, regions: Sequence[Region], seed: int = 0, *, waves: bool = True,
              precut: Optional[dict] = None) -> Generator[GenRequest, list, np.ndarray]:
        """`anonymize` as a coroutine, so that a scheduler can batch the crops of many images (the streaming
        pipeline, avanon.mirror.stream): yields one GenRequest per wave and generator, receives the generated crops
        ([-1, 1] HxWx3 float32, in the request's order), pastes them, and returns the anonymized image. The image's
        own order (passes, then waves) is kept, so the result does not depend on what else shares a batch.
        waves: False processes every instance alone (the reference's order; same result on CPU).
        precut: the first wave's crops cut ahead by :meth:`precut` (on the unchanged image, so they are equal)."""
        _check_image(image)
        out = image.copy()
        imshape = image.shape[:2]
        todo = _todo(regions)
        yield from self._pass_steps(out, self._primary_jobs(todo, imshape), seed, waves, precut)
        if self._params["hr_faces"]:
            yield from self._pass_steps(out, self._hr_jobs(todo, imshape), seed, waves, None)
        return out

    def precut(self, image: np.ndarray, regions: Sequence[Region], seed: int = 0) -> Optional[dict]:
        """The crops of the first wave of the first pass (cut from the unchanged image): a worker's share of the
        work in the streaming pipeline. Keys are job positions, as :meth:`steps` expects."""
        _check_image(image)
        jobs = self._primary_jobs(_todo(regions), image.shape[:2])
        if not jobs:
            return None
        return {i: self._crop(image, jobs[i]) for i in plan_waves([j.region.clip_box for j in jobs])[0]}

    def _pass_steps(self, out: np.ndarray, jobs: list[_Job], seed: int, waves: bool, precut: Optional[dict]):
        if not jobs:
            return
        groups = plan_waves([j.region.clip_box for j in jobs]) if waves else [[i] for i in range(len(jobs))]
        for n, wave in enumerate(groups):
            by_model: dict[str, list[int]] = {}
            for i in wave:
                by_model.setdefault(jobs[i].model, []).append(i)
            for model, idxs in by_model.items():
                # instances of one wave are disjoint: pasting one does not change another's crop
                cut = precut if (n == 0 and precut) else {}
                crops = [cut[i] if i in cut else self._crop(out, jobs[i]) for i in idxs]
                generated = yield GenRequest(model, [jobs[i] for i in idxs], crops, seed)
                for i, c, x in zip(idxs, crops, generated, strict=True):  # every crop pasted, or an error
                    paste(out, jobs[i].region, self._patch(jobs[i], c, x))

    def _max_batch(self) -> int:
        b = self._params["batch"]
        if b == "auto":  # batching pays on a GPU; on CPU it is slower per instance (benchmarks/realistic_batching.py)
            return DEFAULT_MAX_BATCH if self._device().type == "cuda" else 1
        return DEFAULT_MAX_BATCH if b is True else 1 if b is False else int(b)

    def use_stream(self) -> bool:
        """Whether the mirror writer should run this anonymizer in the streaming pipeline (``pipeline``)."""
        mode = self._params["pipeline"]
        return mode == "stream" or (mode == "auto" and self._device().type == "cuda")

    def stream_batch(self) -> int:
        """Crops per forward pass in the streaming pipeline, gathered across images."""
        return self._max_batch()

    def launch(self, requests: Sequence[GenRequest], max_batch: Optional[int] = None):
        """Start generating the crops of requests that share a generator, in forward passes of at most max_batch
        crops; on CUDA the passes and the copies back to pinned host memory are queued, not waited for. Returns a
        handle for :meth:`collect`."""
        max_batch = max_batch or self.stream_batch()
        model = requests[0].model
        if any(r.model != model for r in requests):
            raise ValueError("launch: requests of one call must share a generator")
        items = [(r.seed, job, crop) for r in requests for job, crop in zip(r.jobs, r.crops)]
        return requests, [self._forward(model, items[s:s + max_batch]) for s in range(0, len(items), max_batch)]

    def collect(self, handle) -> list[list[np.ndarray]]:
        """The generated crops of each request of a :meth:`launch` (waits for the device)."""
        requests, outs = handle
        arrays: list[np.ndarray] = []
        for out in outs:
            if isinstance(out, tuple):
                host, event = out
                event.synchronize()
                out = host
            arrays.extend(out.permute(0, 2, 3, 1).numpy())
        result, k = [], 0
        for r in requests:
            result.append(arrays[k:k + len(r.jobs)])
            k += len(r.jobs)
        return result

    def _autocast(self, device: torch.device):
        precision = self._params["precision"]
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)

    def _channels_last(self, device: torch.device) -> bool:
        c = self._params["channels_last"]
        return device.type == "cuda" if c == "auto" else bool(c)

    def _crop(self, image: np.ndarray, job: _Job) -> _Crop:
        r = job.region
        ch, cw = CROP_SIZE[job.model]
        if tuple(r.crop_size) != (ch, cw) or tuple(r.crop_mask.shape) != (ch, cw):
            raise ValueError(f"region {r.instance_id}: crop size {tuple(r.crop_size)} / crop_mask "
                             f"{r.crop_mask.shape} does not fit generator {job.model} ({ch}x{cw})")
        kind = MODEL_KIND[job.model]
        crop = cut_pad(image, r.exp_box)
        small = resize_to_crop(crop, (ch, cw), kind, decide_size=box_size(r.clip_box))
        img = torch.from_numpy(to_unit(small)).permute(2, 0, 1).unsqueeze(0).contiguous()
        keep = torch.from_numpy(~r.crop_mask).to(torch.float32)[None, None]
        inputs = {"img": img, "condition": img * keep, "mask": keep}
        undilated = r.crop_mask
        if kind == "body":
            und = (r.extra or {}).get("crop_mask_undilated")
            if und is not None:
                undilated = np.asarray(und, dtype=bool)
        if job.model == "body_triagan288":
            from avanon.generators import joint_map

            inputs["maskrcnn_mask"] = torch.from_numpy(~undilated).to(torch.float32)[None, None]
            kp = np.zeros((17, 3), np.float32) if r.keypoints is None \
                else np.asarray(r.keypoints, dtype=np.float32).reshape(-1, 3)
            if kp.shape[0] != 17:
                raise ValueError(f"region {r.instance_id}: TriA-GAN needs the 17 COCO keypoints, got {kp.shape[0]}")
            kpt = torch.from_numpy(kp.copy())[None]
            inputs["keypoints"] = kpt
            inputs["joint_map"] = joint_map(kpt, ch, cw)
        return _Crop(inputs, small, undilated)

    def _forward(self, model: str, items: list[tuple[int, _Job, _Crop]]):
        """One forward pass (or one HM-LO optimisation) over (seed, job, crop) items; the [-1, 1] NCHW float32
        result on the host, or (pinned host tensor, CUDA event) while the copy is in flight."""
        G = self.generator(model)
        device = self._device()
        crops = [c for _, _, c in items]
        batch = {k: torch.cat([c.inputs[k] for c in crops]) for k in crops[0].inputs}
        if device.type == "cuda":
            memory = torch.channels_last if self._channels_last(device) else torch.contiguous_format
            batch = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
            batch = {k: v.contiguous(memory_format=memory) if v.ndim == 4 else v for k, v in batch.items()}
        w = torch.cat([sample_w(G.style_net, job.truncation[0], job.truncation[1], seed, job.region.instance_id,
                                job.salt) for seed, job, _ in items])
        with self._autocast(device):
            if self._params["histogram"] == "hmlo":
                def forward(wa: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
                    idx = rows.to(device)
                    return G(**{k: v.index_select(0, idx) for k, v in batch.items()}, w=wa)["img"].float()

                result = hmlo_optimize(forward, (batch["img"].float() + 1) / 2, w, steps=self._params["hmlo_steps"],
                                       threshold=self._params["hmlo_threshold"], lr=self._params["hmlo_lr"])
                self.last_hmlo.append(result)
                images = result.images
            else:
                with torch.inference_mode():
                    images = G(**batch, w=w)["img"]
        images = images.detach().float()
        if device.type != "cuda":
            return images.cpu()
        host = torch.empty(images.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(images.contiguous(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _patch(self, job: _Job, crop: _Crop, x: np.ndarray) -> np.ndarray:
        """A generated crop ([-1, 1]) as the expanded box's pixels (float32 [0, 255]): HM, then resized back."""
        gen = from_unit(x)
        if self._params["histogram"] == "hm":
            gen = histogram_match(gen, crop.real, crop.undilated, float(self._params["hm_sigma"]))
        return resize_from_crop(gen, box_size(job.region.exp_box))


def _check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"image must be an HxWx3 uint8 array, got {getattr(image, 'shape', None)} "
                         f"{getattr(image, 'dtype', type(image).__name__)}")


def _todo(regions: Sequence[Region]) -> list[Region]:
    return [r for r in regions if r.clip_box[2] > r.clip_box[0] and r.clip_box[3] > r.clip_box[1] and r.image_mask.any()]
