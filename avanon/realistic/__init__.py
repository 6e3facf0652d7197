"""The generator API under its earlier name: `avanon.generators` holds the networks now."""
from avanon.generators import (  # noqa: F401
    CHECKPOINTS, COCO_KEYPOINTS, EXPECTED_PARAM_COUNTS, GENERATOR_NAMES, CheckpointError, MappingNetwork,
    StyleGANUnet, TriaGAN, build_generator, compute_centers, joint_map, keypoint_channels, load_generator,
    map_state_dict, md5sum, num_parameters, read_checkpoint,
)
