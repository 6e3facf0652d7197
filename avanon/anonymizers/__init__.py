"""Anonymizers: `build_anonymizer(name, params).anonymize(image, regions, seed)`.

Registered names: mask_out, blur, pixelate (traditional). Realistic GAN anonymizers register into the same
ANONYMIZERS registry.
"""
from avanon.anonymizers.base import ANONYMIZERS, Anonymizer, AnonymizerConfigError, build_anonymizer
from avanon.anonymizers import traditional  # noqa: F401  (registers the traditional methods)

__all__ = ["ANONYMIZERS", "Anonymizer", "AnonymizerConfigError", "build_anonymizer"]
