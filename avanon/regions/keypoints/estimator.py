"""The `estimator` keypoint provider: a top-down pose model (torchvision Keypoint R-CNN heads, or MMPose) run on
each instance's mask box."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from dataset_adapters.base import ImageRecord, Instance
from avanon.regions.keypoints.base import (
    BACKENDS, CONFIDENCE_MODES, TORCHVISION_KEYPOINT_URL, KEYPOINT_PROVIDERS, NUM_KEYPOINTS, KeypointConfigError, KeypointProvider, _choice, _number,
)


# ------------------------------------------------------------------------------------------------ estimator
def torchvision_weights_hint(path: Optional[Path]) -> str:
    name = TORCHVISION_KEYPOINT_URL.rsplit("/", 1)[1]
    where = f"{path} does not exist. " if path is not None else "no weights file given. "
    return (f"keypoints.estimator: {where}The torchvision backend needs torchvision's COCO Keypoint R-CNN weights, "
            f"one file: download {TORCHVISION_KEYPOINT_URL} on a machine with internet access (e.g. "
            f"`curl -LO {TORCHVISION_KEYPOINT_URL}`), copy it here and pass weights=/path/to/{name} "
            f"(or put it in torch's hub cache, {_torch_hub_checkpoint()}). avanon never downloads it.")



def _torch_hub_checkpoint() -> Path:
    try:
        import torch

        hub = Path(torch.hub.get_dir())
    except Exception:
        hub = Path(os.path.expanduser("~/.cache/torch/hub"))
    return hub / "checkpoints" / TORCHVISION_KEYPOINT_URL.rsplit("/", 1)[1]



def load_state_dict_file(path: Path) -> dict:
    """A torchvision state dict saved with torch.save (a {'model'|'state_dict': ...} wrapper is unwrapped)."""
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KeypointConfigError(f"keypoints.estimator: cannot read weights file {path}: "
                                  f"{type(exc).__name__}: {exc}") from None
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise KeypointConfigError(f"keypoints.estimator: {path} does not hold a state dict")
    return sd



class TorchvisionTopDown:
    """Keypoint R-CNN R-50 FPN used top-down: given boxes are the proposals of its keypoint branch."""

    def __init__(self, weights: Path, device: str = "cpu", min_size: int = 800, max_size: int = 1333,
                 confidence: str = "local_softmax"):
        import torch
        from torchvision.models.detection import keypointrcnn_resnet50_fpn

        state = load_state_dict_file(weights)
        # Built on the meta device (no random initialisation, ~2 s saved) and filled from the file: strict, so every
        # parameter and buffer comes from it. Only the RPN's anchors stay on meta: the RPN is never run.
        with torch.device("meta"):
            model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_keypoints=NUM_KEYPOINTS,
                                              min_size=min_size, max_size=max_size)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise KeypointConfigError(f"keypoints.estimator: {weights} is not a keypointrcnn_resnet50_fpn state "
                                      f"dict (17 keypoints): {str(exc).splitlines()[0]}") from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.confidence = confidence

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """image (H, W, 3) uint8 RGB, boxes (N, 4) float xyxy -> xy (N, 17, 2), confidence (N, 17)."""
        import torch
        import torch.nn.functional as F
        from torchvision.models.detection.roi_heads import heatmaps_to_keypoints

        model = self.model
        with torch.inference_mode():
            img = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).to(self.device).permute(2, 0, 1).float() / 255.0
            batch, _ = model.transform([img])
            new_h, new_w = batch.image_sizes[0]
            sx, sy = new_w / image.shape[1], new_h / image.shape[0]
            scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32, device=self.device)
            rois = torch.as_tensor(boxes, dtype=torch.float32, device=self.device) * scale
            features = model.backbone(batch.tensors)
            heads = model.roi_heads
            pooled = heads.keypoint_roi_pool(features, [rois], batch.image_sizes)
            logits = heads.keypoint_predictor(heads.keypoint_head(pooled))  # (N, 17, 56, 56)
            xy, scores = heatmaps_to_keypoints(logits, rois)
            if self.confidence != "logit":
                n, k, hh, ww = logits.shape
                probs = F.softmax(logits.reshape(n, k, -1).float(), dim=-1).reshape(n, k, hh, ww)
                if self.confidence == "local_softmax":  # probability mass within +-1 heatmap bin of the peak
                    probs = F.avg_pool2d(probs, 3, stride=1, padding=1, count_include_pad=True) * 9
                widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)[:, None]
                heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)[:, None]
                bx = ((xy[..., 0] - rois[:, 0:1]) / widths * ww).floor().long().clamp(0, ww - 1)
                by = ((xy[..., 1] - rois[:, 1:2]) / heights * hh).floor().long().clamp(0, hh - 1)
                flat = probs.reshape(n, k, -1)
                scores = flat.gather(2, (by * ww + bx)[..., None])[..., 0]
            out = xy[..., :2] / torch.tensor([sx, sy], dtype=torch.float32, device=self.device)
            return (out.cpu().numpy().astype(np.float32),
                    scores.float().cpu().numpy().astype(np.float32))



# COCO's 17 keypoints in COCO (= detectron2) order: the order of every provider's rows (the file provider's
# reference rows, the annotations, torchvision's Keypoint R-CNN).
COCO_KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                       "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                       "right_knee", "left_ankle", "right_ankle")
MMPOSE_BUILTIN = "td-hm_res50_coco-256x192"
MMPOSE_RANDOM = "random"


def mmpose_builtin_config(name: str = MMPOSE_BUILTIN) -> dict:
    """The built-in mmpose (>= 1.0) model config: a top-down heatmap model (SimpleBaseline: ResNet-50 and three
    deconvolutions, MSRA heatmaps 48x64 for a 192x256 input, COCO's 17 keypoints), the architecture of mmpose's
    `td-hm_res50_8xb64-210e_coco-256x192` model-zoo entry, so its published checkpoint loads into it. Inference
    settings only (no training schedule); flip test off."""
    if name != MMPOSE_BUILTIN:
        raise KeypointConfigError(f"keypoints.estimator.mmpose_config: unknown built-in {name!r}; give a config "
                                  f"file or {MMPOSE_BUILTIN!r}")
    codec = {"type": "MSRAHeatmap", "input_size": (192, 256), "heatmap_size": (48, 64), "sigma": 2}
    return {
        "default_scope": "mmpose",
        "codec": codec,
        "model": {
            "type": "TopdownPoseEstimator",
            "data_preprocessor": {"type": "PoseDataPreprocessor", "mean": [123.675, 116.28, 103.53],
                                  "std": [58.395, 57.12, 57.375], "bgr_to_rgb": True},
            "backbone": {"type": "ResNet", "depth": 50},
            "head": {"type": "HeatmapHead", "in_channels": 2048, "out_channels": NUM_KEYPOINTS,
                     "loss": {"type": "KeypointMSELoss", "use_target_weight": True}, "decoder": codec},
            "test_cfg": {"flip_test": False}},
        # the dataset type names the keypoints (mmpose's COCO metainfo: names, flip pairs) for init_model
        "train_dataloader": {"dataset": {"type": "CocoDataset"}},
        "test_dataloader": {"dataset": {"type": "CocoDataset", "pipeline": [
            {"type": "LoadImage"}, {"type": "GetBBoxCenterScale"},
            {"type": "TopdownAffine", "input_size": (192, 256)}, {"type": "PackPoseInputs"}]}},
    }


def mmpose_weights_hint(given: Optional[str], config: str) -> str:
    where = f"{given} is not a local file. " if given else "no mmpose_checkpoint given. "
    return (f"keypoints.estimator (backend mmpose): {where}Download the checkpoint that matches mmpose_config "
            f"({config}) from mmpose's model zoo on a machine with internet access (for the built-in "
            f"{MMPOSE_BUILTIN}: the COCO 256x192 SimpleBaseline ResNet-50 checkpoint; for ViTPose as in Paper F: a "
            f"ViTPose config file and its checkpoint), copy it here and pass mmpose_checkpoint=/path/to/file.pth. "
            f"avanon never downloads weights. mmpose_checkpoint: {MMPOSE_RANDOM} builds a randomly initialised model "
            f"(pipeline checks only: its keypoints are noise).")


class MMPoseTopDown:
    """An mmpose (>= 1.0) top-down model (e.g. ViTPose as the paper, or the built-in SimpleBaseline ResNet-50); only
    when mmpose is importable. Its keypoints are returned in COCO order, mapped by the names in the model's
    dataset_meta (a COCO-WholeBody model gives its 17 body keypoints)."""

    def __init__(self, config: str, checkpoint: Optional[Path], device: str = "cpu", seed: int = 0):
        try:
            from mmpose.apis import inference_topdown, init_model
        except Exception as exc:
            raise KeypointConfigError(
                "keypoints.estimator: backend 'mmpose' needs mmpose >= 1.0 (with mmcv and mmengine) importable, "
                f"which failed: {type(exc).__name__}: {exc}. scripts/install_openmmlab.sh installs it "
                "(docs/openmmlab.md); the default backend 'torchvision' needs nothing extra.") from None
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if config == MMPOSE_BUILTIN:
            from mmengine.config import Config

            model_config = Config(mmpose_builtin_config(config))
        else:
            model_config = config
        self._infer = inference_topdown
        if checkpoint is None:  # random initialisation, reproducible
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = init_model(model_config, None, device=device)
        else:
            with _torch_full_load():
                self.model = init_model(model_config, str(checkpoint), device=device)
        self.index = _coco_index(getattr(self.model, "dataset_meta", None) or {})

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """image (H, W, 3) uint8 RGB, boxes (N, 4) float xyxy -> xy (N, 17, 2), confidence (N, 17), COCO order."""
        results = self._infer(self.model, np.ascontiguousarray(image[..., ::-1]), bboxes=np.asarray(boxes),
                              bbox_format="xyxy")
        xy = np.stack([np.asarray(r.pred_instances.keypoints)[0] for r in results]).astype(np.float32)
        conf = np.stack([np.asarray(r.pred_instances.keypoint_scores)[0] for r in results]).astype(np.float32)
        return xy[:, self.index, :2], conf[:, self.index]


def _coco_index(meta: dict) -> np.ndarray:
    """Column of each COCO keypoint (COCO order) in a model's output, from its dataset_meta's names."""
    names = meta.get("keypoint_id2name")
    if not names:
        if int(meta.get("num_keypoints", NUM_KEYPOINTS)) != NUM_KEYPOINTS:
            raise KeypointConfigError("keypoints.estimator: the mmpose model names no keypoints and does not have "
                                      f"COCO's {NUM_KEYPOINTS}")
        return np.arange(NUM_KEYPOINTS)
    by_name = {str(n): int(i) for i, n in names.items()}
    missing = [n for n in COCO_KEYPOINT_NAMES if n not in by_name]
    if missing:
        raise KeypointConfigError(f"keypoints.estimator: the mmpose model's keypoints lack COCO's "
                                  f"{', '.join(missing)}; it needs COCO (or COCO-WholeBody) keypoints")
    return np.array([by_name[n] for n in COCO_KEYPOINT_NAMES])


class _torch_full_load:
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 while an mmpose checkpoint (which holds more than tensors) is read."""

    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

    def __enter__(self):
        self.before = os.environ.get(self.key)
        os.environ[self.key] = "1"

    def __exit__(self, *exc):
        if self.before is None:
            os.environ.pop(self.key, None)
        else:
            os.environ[self.key] = self.before



@KEYPOINT_PROVIDERS.register("estimator")
class EstimatorKeypointProvider(KeypointProvider):
    """A top-down pose estimator on each instance's tight mask box (padded by `box_padding` of its size).

    Parameters: backend (torchvision | mmpose), weights (torchvision: the COCO Keypoint R-CNN state dict file;
    default: torch's hub cache), device (cpu | cuda | auto), min_size / max_size (torchvision's resize, 800 / 1333),
    confidence (torchvision: local_softmax = spatial-softmax mass within one heatmap bin of the peak, softmax =
    peak probability, logit = torchvision's raw keypoint score), box_padding (0.0), categories (default: the target
    categories when given, else every category), mmpose_config (mmpose backend: a model config file, default the
    built-in td-hm_res50_coco-256x192) / mmpose_checkpoint (a local checkpoint file, or "random" for a randomly
    initialised model: pipeline checks only), threshold (0.3), strict. Every backend returns COCO-order keypoints
    in image coordinates, the format of the file provider.

    Keypoint R-CNN's heatmaps are trained with a spatial softmax and carry no visibility, so no confidence of it is
    calibrated like ViTPose's heatmap peaks; check the threshold on real weights with
    `avanon inspect --keypoints estimator` against Paper F's 95.8 % (Cityscapes) / 85.5 % (BDD100K)."""

    name = "estimator"
    needs_image = True
    keys = ("backend", "weights", "device", "min_size", "max_size", "confidence", "box_padding", "categories",
            "mmpose_config", "mmpose_checkpoint")

    def __init__(self, params, dataset_root, *, split=None, target_categories=None):
        super().__init__(params, dataset_root, split=split, target_categories=target_categories)
        p = self.params
        self.backend = _choice(self.name, "backend", p.get("backend", "torchvision"), BACKENDS)
        self.device = p.get("device", "cpu")
        if not isinstance(self.device, str):
            raise KeypointConfigError(f"keypoints.estimator.device: expected a string, got {self.device!r}")
        self.box_padding = _number(self.name, "box_padding", p.get("box_padding", 0.0))
        cats = p.get("categories", self.target_categories)
        if isinstance(cats, str):
            cats = [cats]
        self.categories = tuple(cats) if cats else None
        if self.backend == "torchvision":
            self.confidence = _choice(self.name, "confidence", p.get("confidence", "local_softmax"),
                                      CONFIDENCE_MODES)
            sizes = {}
            for key, default in (("min_size", 800), ("max_size", 1333)):
                v = p.get(key, default)
                if isinstance(v, bool) or not isinstance(v, int) or v < 32:
                    raise KeypointConfigError(f"keypoints.estimator.{key}: expected an integer >= 32, got {v!r}")
                sizes[key] = v
            self.min_size, self.max_size = sizes["min_size"], sizes["max_size"]
            given = p.get("weights")
            path = Path(os.path.expanduser(given)) if given else _torch_hub_checkpoint()
            if not path.is_file():
                raise KeypointConfigError(torchvision_weights_hint(path if given else None))
            self.weights = path
            self.model = TorchvisionTopDown(path, self.device, self.min_size, self.max_size, self.confidence)
        else:
            self.confidence = "heatmap"
            config, ckpt = p.get("mmpose_config", MMPOSE_BUILTIN), p.get("mmpose_checkpoint")
            if not isinstance(config, str):
                raise KeypointConfigError(f"keypoints.estimator.mmpose_config: expected a config file or "
                                          f"{MMPOSE_BUILTIN!r}, got {config!r}")
            if config != MMPOSE_BUILTIN and not Path(os.path.expanduser(config)).is_file():
                raise KeypointConfigError(f"keypoints.estimator.mmpose_config: {config} is not a file (give an "
                                          f"mmpose model config file, or leave it out for {MMPOSE_BUILTIN!r})")
            if ckpt is not None and not isinstance(ckpt, str):
                raise KeypointConfigError(f"keypoints.estimator.mmpose_checkpoint: expected a file name, got {ckpt!r}")
            local = ckpt is not None and "://" not in ckpt and Path(os.path.expanduser(ckpt)).is_file()
            if ckpt != MMPOSE_RANDOM and not local:
                raise KeypointConfigError(mmpose_weights_hint(ckpt, config))
            self.mmpose_config = config if config == MMPOSE_BUILTIN else os.path.expanduser(config)
            self.weights = None if ckpt == MMPOSE_RANDOM else Path(os.path.expanduser(ckpt))
            self.model = MMPoseTopDown(self.mmpose_config, self.weights, self.device)

    def boxes(self, record: ImageRecord) -> tuple[list[Instance], np.ndarray]:
        """The instances the estimator runs on and their (padded, clipped) boxes."""
        insts, boxes = [], []
        for inst in record.instances:
            x0, y0, x1, y1 = inst.box
            if inst.iscrowd or x1 <= x0 or y1 <= y0:
                continue
            if self.categories is not None and inst.category not in self.categories:
                continue
            px, py = self.box_padding * (x1 - x0), self.box_padding * (y1 - y0)
            boxes.append([max(x0 - px, 0.0), max(y0 - py, 0.0), min(x1 + px, float(record.width)),
                          min(y1 + py, float(record.height))])
            insts.append(inst)
        return insts, np.asarray(boxes, dtype=np.float32).reshape(-1, 4)

    def keypoints(self, record, image=None):
        if image is None:
            raise ValueError("keypoints.estimator needs the image")
        insts, boxes = self.boxes(record)
        if not insts:
            self._count({})
            return {}
        xy, conf = self.model(image, boxes)
        found = {inst.instance_id: np.concatenate([xy[i], conf[i][:, None]], axis=1).astype(np.float32)
                 for i, inst in enumerate(insts)}
        self._count(found)
        return found

    def describe(self):
        d = {**super().describe(), "backend": self.backend,
             "weights": str(self.weights) if self.weights is not None else MMPOSE_RANDOM,
             "weights_size": self.weights.stat().st_size if self.weights is not None else 0,
             "device": self.device, "box_padding": self.box_padding,
             "confidence": self.confidence, "categories": list(self.categories) if self.categories else None}
        if self.backend == "torchvision":
            d.update(min_size=self.min_size, max_size=self.max_size, model="keypointrcnn_resnet50_fpn")
        else:
            d.update(mmpose_config=self.mmpose_config)
        return d
