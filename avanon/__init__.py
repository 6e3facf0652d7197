"""avanon: anonymize the people in AV datasets and measure what it costs the detectors trained on them.

The Python API (see avanon.api for the details)::

    import avanon
    out = avanon.anonymize_image(image, masks=person_masks, region="body", method="blur")
    summary = avanon.anonymize_dataset(dataset="coco", root="/data/coco", region="body", method="mask_out",
                                       out="/data/anon")
    avanon.run("recipes/demo.yaml")
    df = avanon.load_results("out/demo/synthetic/study/demo")
"""
from avanon.api import anonymize_dataset, anonymize_image, load_results, run

__version__ = "0.1.0"
__all__ = ["__version__", "anonymize_dataset", "anonymize_image", "load_results", "run"]
