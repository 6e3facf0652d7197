"""Anonymizers: `build_anonymizer(name, params).anonymize(image, regions, seed)`.

Registered names: mask_out, blur, pixelate (traditional) and realistic (DeepPrivacy2-compatible GAN inpainting,
with HM / HM-LO; generators load lazily, so importing this costs no model).
"""
from avanon.anonymizers.base import ANONYMIZERS, Anonymizer, AnonymizerConfigError, build_anonymizer
from avanon.anonymizers import realistic, traditional  # noqa: F401  (registration)

__all__ = ["ANONYMIZERS", "Anonymizer", "AnonymizerConfigError", "build_anonymizer"]
