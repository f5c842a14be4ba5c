"""Training: the reverse-KL loop, optimizer stages, metrics, checkpoints and plots."""

from .checkpoint import load_latest_checkpoint, save_checkpoint
from .trainer import Trainer, TrainResult

__all__ = ["Trainer", "TrainResult", "load_latest_checkpoint", "save_checkpoint"]
