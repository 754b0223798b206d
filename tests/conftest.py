"""Test-wide settings: offline hubs, deterministic hashing, quiet tokenizers."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PIPELINE_PROGRESS", "0")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one torch thread (several threads on a busy shared CPU spin and run far slower).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
