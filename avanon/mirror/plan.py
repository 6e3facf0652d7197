"""What a mirror is: the settings that make two runs produce the same mirror (MirrorJob), the per-image seed, and
the jobs of a recipe (one per anonymize entry), validated against the dataset before anything is written."""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional

from avanon.schema import RecipeError, config_hash


VERSIONED_PACKAGES = ("avanon", "torch", "torchvision", "numpy", "opencv-python-headless", "pillow",
                      "scikit-image", "pycocotools", "cityscapesscripts", "joblib")



@dataclass(frozen=True)
class MirrorJob:
    """Everything a worker needs to anonymize one image; also the identity of the mirror's settings."""

    source_root: str
    out_dir: str
    region: str
    region_params: dict
    filters: dict
    target_categories: tuple
    method: str
    method_params: dict
    seed: int
    exif_frame: str = "auto"
    jpeg_quality: int = 100
    png_compression: int = 3
    # The selector's resolved description (defaults, derived constants, face-file hash): part of the mirror's
    # identity so that, e.g., an edited face-box file is not mixed into an existing mirror.
    region_description: Optional[dict] = None
    link: str = "copy"  # how untouched files are reproduced; not part of the identity (same bytes either way)
    keypoints_provider: str = "annotations"
    keypoints_params: Optional[dict] = None
    split: str = "train"

    def settings(self) -> dict:
        """What makes two runs produce the same mirror (paths excluded so a moved dataset still resumes; the
        method's runtime parameters excluded so that shards on other devices or batch sizes join one mirror)."""
        d = asdict(self)
        for key in ("out_dir", "source_root", "link"):
            d.pop(key)
        d["target_categories"] = list(self.target_categories)
        d["method_params"] = self.identity_params()
        return d

    def settings_hash(self) -> str:
        return config_hash(self.settings())

    def runtime_params(self) -> dict:
        """The method's parameters that choose how it runs, not what it writes (device, batch size, pipeline)."""
        keys = runtime_keys(self.method)
        return {k: v for k, v in self.method_params.items() if k in keys}

    def identity_params(self) -> dict:
        """The method's parameters that decide the output's pixels (recorded in run.json and every manifest line)."""
        keys = runtime_keys(self.method)
        return {k: v for k, v in self.method_params.items() if k not in keys}

    def tools_key(self) -> str:
        """A process's cached selector and anonymizer are reused only for the same settings AND runtime."""
        return config_hash({"settings": self.settings(), "runtime": self.runtime_params()})


def runtime_keys(method: str) -> frozenset:
    """The runtime parameter names of a registered anonymizer (Anonymizer.runtime_params)."""
    from avanon.anonymizers import ANONYMIZERS

    return ANONYMIZERS.get(method).runtime_params if method in ANONYMIZERS else frozenset()



def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out



def image_seed(seed: int, file_name: str) -> int:
    """Per-image seed from the run seed and the file name: independent of worker count and order."""
    return int(config_hash([seed, file_name])[:8], 16)


def mirror_root(recipe: dict) -> Path:
    """Mirrors of a recipe live in OUTPUT_ROOT/ADAPTER/NAME (e.g. /data/anon/cityscapes/body_mask_out)."""
    return Path(recipe["output"]["root"]) / recipe["dataset"]["adapter"]


def region_identity(selector) -> dict:
    """The selector's description without absolute paths, so a dataset that moved still matches its mirror
    (the face-box file is identified by its sha256)."""
    d = selector.describe()
    if isinstance(d.get("provider"), dict):
        d = dict(d, provider={k: v for k, v in d["provider"].items() if k != "path"})
    return d


def check_categories(recipe: dict, adapter, src: str) -> None:
    """filters.categories may only name human categories this dataset has: a typo ("persn") would anonymize
    nobody and copy every image in the clear."""
    cats = (recipe.get("filters") or {}).get("categories")
    known = tuple(getattr(adapter, "human_categories", adapter.target_categories))
    if isinstance(cats, (list, tuple)):
        unknown = [c for c in cats if c not in known]
        if unknown:
            raise RecipeError(f"{src}: filters.categories: {unknown[0]!r} is not a human category of the "
                              f"{adapter.name} dataset; known: {', '.join(known)}")


def check_face_file_coverage(selector, adapter, recipe: dict, src: str) -> None:
    """A face-box file that names none of the split's images would leave every face in the clear (wrong split,
    wrong key format): refused unless filters.allow_empty is set."""
    provider = getattr(selector, "provider", None)
    entries = getattr(provider, "entries", None)
    if entries is None or (recipe.get("filters") or {}).get("allow_empty"):
        return
    if not any(key in entries for _, keys in adapter.image_index() for key in keys):
        raise RecipeError(f"{src}: regions.face.file: the face-box file {provider.path} names none of the "
                          f"{len(adapter)} images of split {adapter.split!r} (wrong split or file?); set "
                          "filters.allow_empty: true to accept a mirror without face regions")


def needs_keypoints(recipe: dict, entry: dict) -> bool:
    """Whether an anonymize entry uses keypoints: the keypoint-guided body generator (realistic bodies with
    region_model auto or body_triagan288), keypoint-based face boxes, or a require_keypoints filter. The recipe's
    keypoint provider (e.g. the reference's annotated_keypoints files) is needed only for those."""
    if (recipe.get("filters") or {}).get("require_keypoints"):
        return True
    if entry["region"] == "face":
        return (recipe["regions"].get("face") or {}).get("provider") in ("keypoints", "union")
    return entry["method"] == "realistic" and entry["params"].get("region_model", "auto") in ("auto",
                                                                                             "body_triagan288")


def make_jobs(recipe: dict, adapter, only: Optional[list[str]] = None) -> list[tuple[dict, MirrorJob]]:
    """One MirrorJob per selected anonymize entry; region settings are validated here, naming the recipe key."""
    from avanon.regions import RegionConfigError, build_region_selector

    src = recipe.get("_source", "recipe")
    entries = recipe["anonymize"]
    if only:
        names = {e["name"] for e in entries}
        missing = [n for n in only if n not in names]
        if missing:
            raise RecipeError(f"{src}: --only {missing[0]}: no anonymize entry has that name; have: {', '.join(sorted(names))}")
        entries = [e for e in entries if e["name"] in only]
    check_categories(recipe, adapter, src)
    kp = recipe["keypoints"]
    if kp["provider"] != "annotations" and any(needs_keypoints(recipe, e) for e in entries):
        from avanon.regions.keypoints import build_keypoint_provider

        try:
            build_keypoint_provider(kp["provider"], kp["params"], adapter.root, split=recipe["dataset"]["split"],
                                    target_categories=adapter.target_categories)
        except Exception as exc:
            raise RecipeError(f"{src}: keypoints: {exc}") from None
    out = []
    for entry in entries:
        kind = entry["region"]
        try:
            selector = build_region_selector(kind, recipe["regions"][kind], recipe["filters"], adapter.root,
                                             adapter.target_categories)
        except RegionConfigError as exc:
            raise RecipeError(f"{src}: regions.{kind} / filters: {exc}") from None
        check_face_file_coverage(selector, adapter, recipe, src)
        job = MirrorJob(
            source_root=str(adapter.root.resolve()),
            out_dir=str(mirror_root(recipe) / entry["name"]),
            region=kind,
            region_params=recipe["regions"][kind],
            filters=recipe["filters"],
            target_categories=tuple(adapter.target_categories),
            method=entry["method"],
            method_params=entry["params"],
            seed=recipe["seed"],
            exif_frame=recipe["output"]["exif_frame"],
            jpeg_quality=recipe["output"]["jpeg_quality"],
            png_compression=recipe["output"]["png_compression"],
            region_description=region_identity(selector),
            link=recipe["output"]["link"],
            # a keypoint provider only where keypoints are used (its files are needed only then)
            keypoints_provider=kp["provider"] if needs_keypoints(recipe, entry) else "annotations",
            keypoints_params=kp["params"] if needs_keypoints(recipe, entry) else {},
            split=recipe["dataset"]["split"],
        )
        out.append((entry, job))
    return out


def split_image_rule(record_files):
    """Which other image files of the tree belong to the split's image folders and so were never checked for people
    (left out of the mirror unless output.copy_unannotated): an image in a folder that holds records, or anywhere
    below the deepest folder that holds all of the split's records (a new city folder, a subfolder of train2017)."""
    from avanon.mirror.imageio import IMAGE_SUFFIXES
    from pathlib import PurePosixPath

    dirs = {str(PurePosixPath(f).parent) for f in record_files}
    parts = [PurePosixPath(d).parts for d in dirs]
    common = []
    for level in zip(*parts) if parts else ():
        if len(set(level)) != 1:
            break
        common.append(level[0])
    root = "/".join(common)

    def in_split(rel: str) -> bool:
        p = PurePosixPath(rel)
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            return False
        return str(p.parent) in dirs or (bool(root) and rel.startswith(root + "/"))
    return in_split
