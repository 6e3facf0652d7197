"""The anonymizer contract shared by the traditional and the realistic (GAN) methods.

An anonymizer is built from a name and a params dict (validated here, so a bad recipe fails before any image is
touched), reports its resolved params for the manifest and a short tag for the mirror directory, and anonymizes
one image given its regions in paste order.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np

from avanon.anonymizers.crops import paste
from avanon.regions.base import Region
from avanon.registry import Registry


class AnonymizerConfigError(ValueError):
    """A recipe asked for an unknown anonymizer, an unknown parameter or a bad value (the message names it)."""


ANONYMIZERS: Registry[type["Anonymizer"]] = Registry("anonymizer")


class Anonymizer:
    """Base class. Subclasses set `name` and `defaults`, validate in `check_params`, implement
    `anonymize_region`, and may override `tag`.

    `anonymize` follows the reference's recursive stitching: regions are processed in the given order, each cut
    from the image as already updated by the previous ones, and each result is pasted only where that region's
    image_mask is True. Pixels outside the union of the image_masks are never written.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    # Parameters that choose how the method runs (device, batch size, pipeline), not the pixels it writes: left
    # out of a mirror's identity, so shards on different devices or with other batch sizes make one mirror.
    runtime_params: ClassVar[frozenset] = frozenset()

    def __init__(self, params: Optional[Mapping[str, Any]] = None):
        if params is not None and not isinstance(params, Mapping):
            raise AnonymizerConfigError(f"{self.name}: params must be a mapping, got {type(params).__name__}")
        given = dict(params or {})
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "(none)"
            raise AnonymizerConfigError(f"{self.name}: unknown parameter {unknown[0]!r}; known: {known}")
        self._params = self.check_params({**self.defaults, **given})

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate and normalise the merged params; raise AnonymizerConfigError naming the key."""
        return params

    @property
    def params(self) -> dict[str, Any]:
        """The fully resolved parameters (a copy), as recorded in the manifest."""
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self._params.items()}

    @property
    def tag(self) -> str:
        """Short name for the mirror directory; distinct for settings that give distinct outputs."""
        return self.name

    def anonymize(self, image: np.ndarray, regions: Sequence[Region], seed: int = 0) -> np.ndarray:
        """Return a new anonymized copy of `image` (HxWx3 uint8 RGB); `regions` are already in paste order."""
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            raise ValueError(f"image must be an HxWx3 uint8 array, got {getattr(image, 'shape', None)} "
                             f"{getattr(image, 'dtype', type(image).__name__)}")
        out = image.copy()
        rng = np.random.default_rng(seed)
        for region in regions:
            x0, y0, x1, y1 = region.clip_box
            if x1 <= x0 or y1 <= y0 or not region.image_mask.any():
                continue
            paste(out, region, self.anonymize_region(out, region, rng))
        return out

    def precut(self, image: np.ndarray, regions: Sequence[Region], seed: int = 0) -> Optional[dict]:
        """Work on the unchanged image that a worker process can do ahead of `anonymize` (the streaming
        pipeline's CPU stage); None when there is none."""
        return None

    def anonymize_region(self, image: np.ndarray, region: Region, rng: np.random.Generator) -> np.ndarray:
        """The anonymized pixels of one region, cut from the current `image` (do not modify it): an array of the
        expanded box's size or of the clip box's size, uint8 or float (rounded on paste). The per-region hook of
        the default `anonymize`; an anonymizer that overrides `anonymize` itself (realistic: batched waves) has
        none, so this is not an abstract method."""
        raise NotImplementedError(f"{type(self).__name__} overrides neither anonymize nor anonymize_region")


def build_anonymizer(name: str, params: Optional[Mapping[str, Any]] = None) -> Anonymizer:
    """Build a registered anonymizer; unknown names and bad params raise AnonymizerConfigError."""
    if name not in ANONYMIZERS:
        known = ", ".join(ANONYMIZERS.names()) or "(none)"
        raise AnonymizerConfigError(f"unknown anonymizer {name!r}; known: {known}")
    return ANONYMIZERS.get(name)(params)


# ----------------------------------------------------------------------------------------------------- validators
def check_choice(owner: str, key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise AnonymizerConfigError(f"{owner}: parameter {key!r} must be one of {list(choices)}, got {value!r}")
    return value


def check_int(owner: str, key: str, value: Any, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise AnonymizerConfigError(f"{owner}: parameter {key!r} must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise AnonymizerConfigError(f"{owner}: parameter {key!r} must be {bounds}, got {value!r}")
    return int(value)


def check_positive(owner: str, key: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value <= 0:
        raise AnonymizerConfigError(f"{owner}: parameter {key!r} must be a positive number, got {value!r}")
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


def check_floor(owner: str, key: str, value: Any) -> Optional[float | int]:
    """An optional lower bound (a strength floor): None or 0 = off (returned as None), else a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value < 0:
        raise AnonymizerConfigError(f"{owner}: parameter {key!r} must be null or a number >= 0, got {value!r}")
    if value == 0:
        return None
    return int(value) if isinstance(value, (int, np.integer)) else float(value)
