"""Devices every tensor test runs on: the CPU always, CUDA when present (skipped with a reason otherwise)."""
import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")),
]
