"""Keypoint providers: COCO keypoints (17, COCO order, image coordinates) for datasets that have none.

The realistic body generator is keypoint-guided; Cityscapes and BDD100K have no keypoint annotations, so the
reference (DeepPrivacy2, Paper F) ran ViTPose on each instance's mask box and shipped the result as
`annotated_keypoints_{split}.json`. Providers (registry `KEYPOINT_PROVIDERS`):

* ``annotations``: the dataset's own keypoints (COCO); a no-op.
* ``file``: the reference's JSON files, mapped to our instance ids (formats: docs/reference.md §1.4):

  - Cityscapes ``{image basename: [[[x, y, conf] * 17] per row]}``. Rows follow detectron2's
    ``load_cityscapes_instances`` (polygons from JSON) restricted to category 0: the polygons JSON read in
    *reverse* order, one row per ``person`` *and* ``persongroup`` polygon (groups are crowd and are skipped by the
    reference, but they advance the row index); deleted objects (detectron2: the key ``deleted`` present) and
    labels with id < 0 are skipped, and so is a polygon that later polygons cover completely (detectron2 drops an
    annotation whose ``poly.buffer(0.5) - union(later polygons)`` is empty; a person with no visible *pixel* is
    still a row as long as that difference is not empty). Row -> instance id: cityscapesscripts'
    ``createInstanceImage`` numbers the non-group ``person`` polygons in *file* order (deleted ones skipped),
    ``24000 + k``; the adapter's instance id is that pixel value.
  - BDD100K ``{str(cocofmt image id): {"keypoints": [[[x, y, conf] * 17] per row]}}``. Rows follow the
    COCO-format JSON's annotations of the image in file order, keeping ``category_id == 1`` (pedestrian) that are
    neither ``iscrowd`` nor ``ignore`` (the reference's ``bdd100k/anonymize_body.py``). Those annotations are
    matched to the record's pedestrians by mask IoU (>= ``min_iou``), so every label source (bitmask, Scalabel RLE,
    cocofmt) maps the same way.

  When an image's row count differs from the number of loader annotations, the image gets no keypoints (its
  people are anonymized with the unconditional generator) and a warning is recorded; never a wrong person's pose.
* ``estimator``: a top-down pose estimator run on each instance's mask box. Backend ``torchvision``: torchvision's
  Keypoint R-CNN (``keypointrcnn_resnet50_fpn``) with the given boxes as proposals (no RPN, no box head): backbone,
  keypoint RoIAlign, keypoint head and predictor, heatmaps decoded by torchvision's ``heatmaps_to_keypoints``; all
  instances of an image in one forward. Weights: the COCO keypoint file torchvision publishes
  (``TORCHVISION_KEYPOINT_URL``), from a local path, never downloaded. Backend ``mmpose`` (ViTPose, as the paper)
  when mmpose is importable.

Visibility: v = 2 where confidence >= ``threshold`` (0.3, as the reference), else 0.

    provider = build_keypoint_provider("file", {}, dataset_root, split="train")
    kps = provider.keypoints(record, image)      # {instance_id: (17, 3) float32 [x, y, confidence]}
    record = provider.apply(record, image)       # instances' keypoints filled where found, v in {0, 2}
    provider.describe()                          # resolved parameters, for the manifest
"""
from avanon.regions.keypoints.base import (  # noqa: F401
    BACKENDS, CONFIDENCE_MODES, DEFAULT_THRESHOLD, FILE_FORMATS, KEYPOINT_PROVIDERS, NUM_KEYPOINTS, OVERLAP_MODES,
    TORCHVISION_KEYPOINT_URL, AnnotationKeypointProvider, KeypointConfigError, KeypointProvider,
    build_keypoint_provider,
)
from avanon.regions.keypoints.estimator import (  # noqa: F401  (registers "estimator")
    EstimatorKeypointProvider, MMPoseTopDown, TorchvisionTopDown, load_state_dict_file, torchvision_weights_hint,
)
from avanon.regions.keypoints.file import (  # noqa: F401  (registers "file")
    FileKeypointProvider, LoaderEntry, cityscapes_instance_values, cityscapes_loader_order, dataset_format_of,
)
