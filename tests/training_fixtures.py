"""Shared by the training tests: the tiny Mask R-CNN heads and the one-thread fixture."""
import pytest

# Heads small enough to train a few iterations on 64x128 images in seconds.
TINY = {"fpn_channels": 32, "representation_size": 64, "mask_head_channels": 32, "mask_head_layers": 1,
        "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100,
        "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32, "box_score_thresh": 0.0}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is as fast, and immune to other processes on a 2-core machine (two OpenMP threads
    spin-wait for each other when the cores are oversubscribed)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
