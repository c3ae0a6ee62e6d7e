"""Fixtures for tests that run torch models: import them into a test module to switch them on there
(`from .torch_support import offline_hub, one_torch_thread  # noqa: F401`)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """A call to the Hugging Face hub fails the test instead of downloading."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two torch threads fighting other work for this 2-core machine run several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
