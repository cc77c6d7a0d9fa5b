"""Experiment tracking: W&B (offline unless logged in) plus local files."""
from .wandb_tracker import Tracker, read_offline_history, resolve_mode

__all__ = ["Tracker", "read_offline_history", "resolve_mode"]
