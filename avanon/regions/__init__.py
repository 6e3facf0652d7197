"""Region selection: which pixels of which instances an anonymizer may change, with the reference's crop geometry.

    from avanon.regions import build_region_selector, FACE_PROVIDERS, RegionConfigError
    selector = build_region_selector(kind, params, filters, dataset_root, target_categories)
    selection = selector.select(record, image)   # Selection: regions in paste order + (instance_id, reason) skips
    selector.describe()                          # resolved parameters, for the manifest
"""
from avanon.regions.base import BODY_CROP, FACE_CROP, Region, Selection
from avanon.regions.face import FACE_PROVIDERS, FaceBox, FaceProvider, keypoint_face_box
from avanon.regions.filters import SKIP_REASONS, RegionConfigError
from avanon.regions.selector import BodySelector, FaceSelector, RegionSelector, build_region_selector

__all__ = [
    "BODY_CROP", "FACE_CROP", "FACE_PROVIDERS", "SKIP_REASONS", "BodySelector", "FaceBox", "FaceProvider",
    "FaceSelector", "Region", "RegionConfigError", "RegionSelector", "Selection", "build_region_selector",
    "keypoint_face_box",
]
