"""Device selection shared by the neural encoders."""

from __future__ import annotations

import torch


def default_device() -> str:
    """Return ``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"
