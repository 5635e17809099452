"""Test-wide settings: one intra-op thread per process (set before torch starts, and inherited by
subprocesses and env workers) so timings are stable on 2 cores and runs compared bit for bit use
the same kernels."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import torch

torch.set_num_threads(1)


import pytest


@pytest.fixture
def no_env(monkeypatch):
    """Any env start is a test failure (bad input must be refused before envs start)."""
    import vlarl.envs

    def boom(cfg):
        raise AssertionError("an env was started before the input error was raised")

    monkeypatch.setattr(vlarl.envs, "make_env", boom)
