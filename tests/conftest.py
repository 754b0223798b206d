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


@pytest.fixture(scope="session")
def tiny_hf_run(tmp_path_factory):
    """A run folder (corpus, vocabularies, exports, fine-tuning report) made by the stages' own code
    (``tests/hf_tiny_run.py``); shared, so tests that change it work on a copy."""
    from hf_tiny_run import tiny_run

    return tiny_run(tmp_path_factory.mktemp("hf"))
