"""Fixtures of the Mask DINO project tests."""

import pytest
import torch
from detectron2.config import instantiate

from maskdino_testing import tiny_model_config


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return instantiate(tiny_model_config())
