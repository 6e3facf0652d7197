"""The mirror stage: a copy of the dataset tree in which only the anonymized split's images differ.

plan (what a mirror is, the jobs of a recipe) -> writer (anonymize or copy every image, fail closed, resume) ->
manifest (one line per image; shards and merge) -> verify (prove a mirror clean from its source); imageio reads
and writes images without surprises; inspect and show look at datasets and mirrors.
"""
from avanon.mirror.manifest import (  # noqa: F401
    MANIFEST, RUN_FILE, MirrorError, compact_manifest, merge_shards, read_manifest,
)
from avanon.mirror.plan import MirrorJob, image_seed, make_jobs  # noqa: F401
from avanon.mirror.writer import MirrorSummary, check_tools, process_image, write_mirror  # noqa: F401
