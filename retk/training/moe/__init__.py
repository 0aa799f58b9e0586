"""Mixture-of-Experts bi-encoders: one feed-forward expert per domain, enforced or learned routing."""

from retk.training.moe.model import MoEModel, is_moe_folder
from retk.training.moe.router import RouterSettings, train_router
from retk.training.moe.train import train_moe

__all__ = ["MoEModel", "RouterSettings", "is_moe_folder", "train_moe", "train_router"]
