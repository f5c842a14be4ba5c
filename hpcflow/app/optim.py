"""Optimizer and learning-rate stages.

Adam with amsgrad by default (talk: "Optimizer regularization": long training can go unstable
with plain Adam), decoupled weight decay when asked for, and a staged learning rate
(talk: "Scheduler policy": several decreasing learning rates), cosine as an option.
"""

from __future__ import annotations

import math

import torch

__all__ = ["build_optimizer", "lr_factor", "set_lr"]


def build_optimizer(params, train_cfg) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` (weight decay decoupled) or ``Adam`` when ``weight_decay == 0``."""
    kwargs = dict(lr=train_cfg.lr, amsgrad=train_cfg.amsgrad)
    if train_cfg.weight_decay > 0:
        return torch.optim.AdamW(params, weight_decay=train_cfg.weight_decay, **kwargs)
    return torch.optim.Adam(params, **kwargs)


def lr_factor(step: int, train_cfg) -> float:
    """Multiplier of the initial rate at optimizer ``step`` (0-based)."""
    total = max(train_cfg.steps, 1)
    if train_cfg.schedule == "constant":
        return 1.0
    if train_cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    passed = sum(1 for m in train_cfg.milestones if step >= round(m * total))
    return train_cfg.gamma**passed


def set_lr(optimizer, step: int, train_cfg) -> float:
    """Set the rate of optimizer ``step``: a pure function of the step, so a resumed run needs
    no scheduler state. Returns the rate."""
    lr = train_cfg.lr * lr_factor(step, train_cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
