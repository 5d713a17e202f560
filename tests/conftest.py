"""Shared pytest fixtures (tiny LGG trees, one-thread runs)."""
import os

import pytest
import torch

from lgg_tree import write_lgg_tree

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def lgg_tree(tmp_path):
    """A 3-patient, 12-slice, 32x32 LGG tree; yields (root, {image path: mask})."""
    masks = write_lgg_tree(tmp_path)
    return tmp_path, masks


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: tiny shapes only lose time to thread hand-offs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
