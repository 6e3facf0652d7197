"""Training / evaluation data: a torch Dataset over a dataset adapter, with images read from another root.

The annotations come from an adapter opened on `annotation root` (the original dataset, or the mirror: its
annotation files are byte-identical), the pixels from `image_root` (the mirror) under the same relative file
names. That is the whole point of a mirror: same annotations, another image root.

Targets are in torchvision's detection format, in the annotation frame (images are decoded with
`avanon.mirror.imageio.read_image`, so EXIF orientation is resolved exactly as the mirror writer did):

- ``boxes`` float32 (N, 4) xyxy, the instance's tight mask box (x1/y1 exclusive, as the adapters give it);
- ``labels`` int64 (N,), 1-based positions in the adapter's ``thing_classes`` (0 is torchvision's background);
  the same ids evaluation uses as COCO ``category_id``;
- ``masks`` uint8 (N, H, W) (task ``instance_segmentation``);
- ``keypoints`` float32 (N, 17, 3) (task ``keypoints``; zeros for a person without keypoints, which torchvision's
  keypoint loss ignores: only visibility > 0 counts);
- ``iscrowd`` int64 (N,), always 0 in training targets (see below); ``image_id`` int; ``area`` float32.

Choices (documented because they change what is trained on):

- Crowd and ignore instances (COCO ``iscrowd``, Cityscapes ``*group``, BDD100K crowd / ignored) are *removed*
  from training targets: torchvision's Mask/Keypoint R-CNN have no ignore regions, so a crowd box would be
  trained as a positive instance (torchvision's own COCO reference does the same). Their pixels stay in the image
  as unlabelled background. Evaluation, by contrast, uses them as crowd regions (that is the evaluator's job).
- ``exclude_classes``: class names removed from the training targets (Paper F §4.4 "other classes only": the
  person class is not trained on; its pixels become background). Label ids stay those of ``thing_classes`` so
  that the model and evaluation agree on ids.
- Images without training targets are *kept* (torchvision trains on empty targets: they give RPN and box-head
  negatives), unless ``drop_empty=True``. For the keypoint task, ``min_keypoints_per_image`` drops images with
  fewer labelled keypoints (torchvision's COCO keypoint reference uses 10, detectron2 1; default 0 = keep all).
- Training images the mirror does not contain (the writer leaves out images it failed to anonymize: privacy
  first) and records with annotation problems are skipped with a count in ``self.skipped`` (and a log line), never
  read from the original root instead. An evaluation image that is missing is an error.
- Instance masks are stored as compressed RLE while indexing, so a COCO-sized split fits in memory.

Augmentation is only a random horizontal flip here (with COCO keypoint left/right swap); resizing (multi-scale in
training, `min_size` list capped by `max_size`) is done by the model's `GeneralizedRCNNTransform`, as in
torchvision. The flip of sample k of the training stream is drawn from a per-sample seed that the sampler
passes in (`InfiniteSampler` below), so augmentation does not depend on the number of DataLoader workers and is
identical after a resume.

Batches (`train_loader`): the sample stream of `InfiniteSampler`, cut into batches of ``solver.batch_size`` images
(all processes together). With ``aspect_ratio_grouping`` (the default, as detectron2 and torchvision's detection
reference do) landscape images (width >= height) and portrait images (width < height) go to separate batches, so a
batch pads less: `GroupedBatchSampler` walks the same stream and fills one bucket per orientation, emitting a
bucket when it holds a full batch. When every image has one orientation (the synthetic demo data) the batches, their
order and every sample's flip seed are exactly the ungrouped ones.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

logger = logging.getLogger(__name__)

TASKS = ("instance_segmentation", "keypoints")
# COCO keypoint order (dataset_adapters.base.COCO_KEYPOINT_NAMES): index of the mirrored keypoint.
COCO_FLIP_INDEX = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)


def thing_classes_of(adapter) -> tuple[str, ...]:
    """The adapter's evaluated classes in official order (looks through wrappers such as the synthetic adapter)."""
    try:
        from dataset_adapters.base import thing_classes_of as _of  # the adapters' own helper, when present
    except ImportError:  # pragma: no cover - older adapters
        _of = None
    if _of is not None:
        return tuple(_of(adapter))
    inner = adapter
    for _ in range(8):
        classes = getattr(inner, "thing_classes", None)
        if classes is not None:
            return tuple(classes)
        inner = getattr(inner, "inner", None)
        if inner is None:
            break
    raise AttributeError(f"adapter {type(adapter).__name__} defines no thing_classes")


def _local_coco_image_ids(records: Sequence) -> dict[str, int]:
    """Fallback for avanon.study.evaluation.results.coco_image_ids, same rule: the records' own ids when all are unique
    decimal numbers (COCO), else 1, 2, ... in the adapter's order."""
    ids = [r.image_id for r in records]
    if records and all(isinstance(i, str) and i.isascii() and i.isdigit() for i in ids) \
            and len({int(i) for i in ids}) == len(ids):
        return {r.file_name: int(r.image_id) for r in records}
    return {r.file_name: k for k, r in enumerate(records, start=1)}


def coco_image_ids(records: Sequence) -> dict[str, int]:
    """file_name -> int image id, the ids ground truth and predictions share (avanon.study.evaluation's rule)."""
    try:
        from avanon.study.evaluation.results import coco_image_ids as _ids
    except ImportError:
        return _local_coco_image_ids(records)
    return _ids(records)


@dataclass
class _Item:
    """One instance, compact: box, label, RLE of the full-image mask (or None), keypoints."""

    box: tuple[float, float, float, float]
    label: int
    rle: Optional[dict]
    keypoints: Optional[np.ndarray]
    area: float
    iscrowd: int = 0


@dataclass
class _Sample:
    file_name: str
    width: int
    height: int
    image_id: int
    items: list


def _full_rle(inst, height: int, width: int) -> dict:
    x0, y0, x1, y1 = inst.box
    full = np.zeros((height, width), dtype=np.uint8, order="F")
    full[y0:y1, x0:x1] = inst.mask
    return mask_utils.encode(full)


class DetectionDataset(torch.utils.data.Dataset):
    """Adapter records + images from `image_root`, in torchvision detection format.

    adapter: an opened dataset adapter (opened with ``categories="all"`` for training on every class; the
    ``thing_classes`` define the label ids); image_root: where the pixels are read (default: the adapter's root).
    train: training targets (crowd/ignore/excluded removed, flips) vs evaluation (every image, no flip, crowd
    kept in the target with iscrowd=1 for reference).
    """

    def __init__(self, adapter, image_root: Optional[str | Path] = None, *, task: str = "instance_segmentation",
                 train: bool = True, exclude_classes: Iterable[str] = (), flip_prob: float = 0.5,
                 exif_frame: str = "auto", drop_empty: bool = False, min_keypoints_per_image: int = 0,
                 thing_classes: Optional[Sequence[str]] = None, uint8_images: bool = False):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.train = train
        self.adapter = adapter
        # uint8 CHW images (4x less to pass between processes and to the GPU; `to_device_image` scales on the
        # device) instead of float in [0, 1]
        self.uint8_images = bool(uint8_images)
        self.flip_prob = float(flip_prob) if train else 0.0
        self.exif_frame = exif_frame
        self.root = Path(adapter.root)
        self.image_root = Path(image_root) if image_root is not None else self.root
        self.thing_classes = tuple(thing_classes) if thing_classes is not None else thing_classes_of(adapter)
        if task == "keypoints" and "person" not in self.thing_classes:
            raise ValueError(f"task keypoints needs a 'person' class; the adapter's classes are {self.thing_classes}")
        unknown = sorted(set(exclude_classes) - set(self.thing_classes))
        if unknown:
            raise ValueError(f"exclude_classes {unknown} are not classes of this dataset: {self.thing_classes}")
        self.exclude_classes = tuple(exclude_classes)
        # keypoints task: a Keypoint R-CNN has one foreground class (person, label 1)
        if task == "keypoints":
            self.label_of = {"person": 1}
        else:
            self.label_of = {name: k + 1 for k, name in enumerate(self.thing_classes)}
        self.skipped: dict[str, int] = {}
        records = list(adapter.images())
        ids = coco_image_ids(records)
        self.samples: list[_Sample] = []
        for rec in records:
            if rec.problems:
                self._skip("annotation problems")
                continue
            if not (self.image_root / rec.file_name).is_file():
                if not train:  # evaluation needs every image of the (original) split
                    raise FileNotFoundError(f"evaluation image {self.image_root / rec.file_name} is missing")
                self._skip("image missing from image_root")
                continue
            items = self._items(rec)
            if train and drop_empty and not items:
                self._skip("no training targets")
                continue
            if train and task == "keypoints" and min_keypoints_per_image > 0:
                n = sum(int((it.keypoints[:, 2] > 0).sum()) for it in items if it.keypoints is not None)
                if n < min_keypoints_per_image:
                    self._skip(f"fewer than {min_keypoints_per_image} keypoints")
                    continue
            self.samples.append(_Sample(rec.file_name, rec.width, rec.height, ids[rec.file_name], items))
        if self.skipped:
            logger.info("dataset %s (%s): %d images, skipped %s", self.root, "train" if train else "eval",
                        len(self.samples), self.skipped)

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _items(self, rec) -> list[_Item]:
        items = []
        for inst in rec.instances:
            label = self.label_of.get(inst.category)
            if label is None:
                continue  # not an evaluated class (e.g. caravan), or not a person for the keypoint task
            crowd = bool(inst.iscrowd or inst.ignore)
            if self.train and (crowd or inst.category in self.exclude_classes):
                continue
            x0, y0, x1, y1 = inst.box
            if x1 <= x0 or y1 <= y0:
                continue  # empty mask: torchvision rejects degenerate boxes
            rle = _full_rle(inst, rec.height, rec.width) if self.task == "instance_segmentation" else None
            kps = None
            if self.task == "keypoints":
                kps = (np.asarray(inst.keypoints, np.float32).copy() if inst.keypoints is not None
                       else np.zeros((17, 3), np.float32))
            # iscrowd is only ever 1 in evaluation datasets
            items.append(_Item((float(x0), float(y0), float(x1), float(y1)), label, rle, kps, float(inst.area),
                               int(crowd)))
        return items

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def file_names(self) -> list[str]:
        return [s.file_name for s in self.samples]

    def aspect_ratio_groups(self) -> list[int]:
        """Per sample: 0 landscape or square (width >= height, annotation frame), 1 portrait."""
        return [0 if s.width >= s.height else 1 for s in self.samples]

    def __getitem__(self, key):
        """key: an index, or (index, sample_seed) from the training sampler (the seed drives the flip)."""
        if isinstance(key, (tuple, list)):
            index, seed = int(key[0]), int(key[1])
        else:
            index, seed = int(key), None
        from avanon.mirror.imageio import read_image

        s = self.samples[index]
        loaded = read_image(self.image_root / s.file_name, (s.width, s.height), self.exif_frame)
        pixels = loaded.pixels if loaded.pixels.flags.writeable else loaded.pixels.copy()
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # uint8 CHW
        target = self._target(s)
        flip = False
        if self.flip_prob > 0:
            rng = np.random.default_rng(seed) if seed is not None else np.random.default_rng()
            flip = bool(rng.random() < self.flip_prob)
        if flip:
            image, target = hflip(image, target)
        return (image if self.uint8_images else image.float().div_(255.0)), target

    def _target(self, s: _Sample) -> dict[str, Any]:
        n = len(s.items)
        boxes = torch.tensor([it.box for it in s.items], dtype=torch.float32).reshape(n, 4)
        target: dict[str, Any] = {
            "boxes": boxes,
            "labels": torch.tensor([it.label for it in s.items], dtype=torch.int64),
            "iscrowd": torch.tensor([it.iscrowd for it in s.items], dtype=torch.int64),
            "area": torch.tensor([it.area for it in s.items], dtype=torch.float32),
            "image_id": s.image_id,
        }
        if self.task == "instance_segmentation":
            if n:
                masks = mask_utils.decode([it.rle for it in s.items])  # H x W x N, uint8
                target["masks"] = torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)))
            else:
                target["masks"] = torch.zeros((0, s.height, s.width), dtype=torch.uint8)
        else:
            kps = np.stack([it.keypoints for it in s.items]) if n else np.zeros((0, 17, 3), np.float32)
            target["keypoints"] = torch.from_numpy(kps)
        return target


def hflip(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Horizontal flip of a CHW image and its target (boxes, masks, COCO keypoints with left/right swap)."""
    width = image.shape[-1]
    image = image.flip(-1)
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    if "keypoints" in target:
        kps = target["keypoints"][:, list(COCO_FLIP_INDEX)].clone()
        kps[..., 0] = width - kps[..., 0]
        kps[kps[..., 2] == 0] = 0  # unlabelled keypoints stay all-zero (as torchvision's reference does)
        target["keypoints"] = kps
    return image, target


def collate(batch):
    """A list of (image, target) -> (tuple of images, tuple of targets): torchvision's detection collate."""
    return tuple(zip(*batch))


def build_adapter_for(data_cfg: dict, split: str, root: Optional[str] = None):
    """Open the configured adapter on `root` (default data_cfg["root"]) with categories="all"."""
    from dataset_adapters import build_adapter

    options = dict(data_cfg.get("options") or {})
    options.setdefault("categories", "all")
    return build_adapter(data_cfg["adapter"], root or data_cfg["root"], split, **options)


def to_device_image(image: torch.Tensor, device) -> torch.Tensor:
    """A dataset image on `device` as float in [0, 1] (uint8 images are scaled there, after the copy)."""
    image = image.to(device, non_blocking=True)
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image


# ------------------------------------------------------------------------------------------------- sampling


def sample_seed(seed: int, position: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(position)]).generate_state(1)[0])


class InfiniteSampler(torch.utils.data.Sampler):
    """An endless stream of (index, sample seed): epoch e is a permutation seeded by (seed, e); process `rank` of
    `world_size` takes positions rank, rank + world_size, ... of the global stream (DistributedSampler's sharding,
    without epochs), starting at `start` (a resume skips what was consumed, without loading it)."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0):
        if size < 1:
            raise ValueError("the training dataset is empty")
        self.size, self.seed, self.rank, self.world_size, self.start = size, int(seed), rank, world_size, start

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def positions(self, start: int = 0) -> Iterator[tuple[int, int]]:
        """(position, index) pairs of the global stream from position `start`, unsharded."""
        first_epoch = start // self.size
        for epoch in itertools.count(first_epoch):
            perm = self._perm(epoch).tolist()
            offset = start - epoch * self.size if epoch == first_epoch else 0
            for j in range(offset, self.size):
                yield epoch * self.size + j, perm[j]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start * self.world_size + self.rank
        epoch, perm = -1, None
        while True:
            e = pos // self.size
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield int(perm[pos % self.size]), sample_seed(self.seed, pos)
            pos += self.world_size


class GroupedBatchSampler(torch.utils.data.Sampler):
    """Batches of (index, sample seed) with one aspect-ratio group each, from `InfiniteSampler`'s global stream.

    groups: one group id per dataset index; batch_size: images per iteration over all processes. The stream is
    walked in order; each sample goes to its group's bucket and a bucket is emitted as a batch when full, so a
    batch holds the earliest unused samples of its group and every sample keeps the flip seed of its stream
    position. Process `rank` of `world_size` takes items rank, rank + world_size, ... of each batch (with one group
    that is exactly `InfiniteSampler`'s sharding). start: batches (iterations) already consumed; a resume replays
    the stream's indices up to there (cheap: no image is read, no seed drawn), so it continues exactly.
    """

    def __init__(self, groups: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.groups = [int(g) for g in groups]
        self.stream = InfiniteSampler(len(self.groups), seed)
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), rank, world_size
        self.start = int(start)

    def global_batches(self, start: int = 0) -> Iterator[list[tuple[int, int]]]:
        """The batches of the run from iteration `start`, as (index, stream position) pairs."""
        if len(set(self.groups)) == 1:  # one group: consecutive slices of the stream, nothing held back
            stream = self.stream.positions(start * self.batch_size)
            while True:
                yield [(index, pos) for pos, index in itertools.islice(stream, self.batch_size)]
        yield from self.bucketed(start)

    def bucketed(self, start: int = 0) -> Iterator[list[tuple[int, int]]]:
        """global_batches by walking the stream from position 0 (what any number of groups needs)."""
        buckets: dict[int, list] = {}
        emitted = 0
        for pos, index in self.stream.positions():
            bucket = buckets.setdefault(self.groups[index], [])
            bucket.append((index, pos))
            if len(bucket) == self.batch_size:
                if emitted >= start:
                    yield bucket
                emitted += 1
                buckets[self.groups[index]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.global_batches(self.start):
            yield [(index, sample_seed(self.seed, pos)) for index, pos in batch[self.rank::self.world_size]]


def _worker_init(worker_id: int) -> None:
    import random

    seed = torch.initial_seed() % 2**32  # DataLoader sets base_seed + worker_id from its own generator
    np.random.seed(seed)
    random.seed(seed)


def train_loader(dataset, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_iter: int = 0,
                 aspect_ratio_grouping: bool = True, workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int = 2) -> torch.utils.data.DataLoader:
    """The endless training DataLoader of one process: batch_size // world_size images per batch, from iteration
    `start_iter` of the stream (a resume), grouped by aspect ratio or not (module docstring)."""
    per_rank = batch_size // world_size
    common = dict(num_workers=workers, collate_fn=collate, worker_init_fn=_worker_init,
                  generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory,
                  persistent_workers=False,  # one iterator for the whole run: workers live as long anyway
                  prefetch_factor=prefetch_factor if workers else None)
    if aspect_ratio_grouping:
        batches = GroupedBatchSampler(dataset.aspect_ratio_groups(), batch_size, seed, rank, world_size,
                                      start=start_iter)
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, **common)
    sampler = InfiniteSampler(len(dataset), seed, rank, world_size, start=start_iter * per_rank)
    return torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=sampler, **common)
