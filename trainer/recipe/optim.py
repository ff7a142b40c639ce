"""SGD with Nesterov momentum, and no weight decay on BatchNorm parameters or biases.

Decaying BN scales and shifts or biases only fights the normalisation (they set the scale of
activations, not model capacity); exempting them is part of the large-batch recipe.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .config import OptimizerConfig


def split_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(parameters with weight decay, parameters without: all of BN and every bias)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            exempt = isinstance(module, _NormBase) or name == "bias"
            (no_decay if exempt else decay).append(param)
    return decay, no_decay


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.SGD:
    """Two parameter groups; the LR is set before every step by the schedule."""
    decay, no_decay = split_decay(model)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def build_loss(cfg: OptimizerConfig) -> nn.CrossEntropyLoss:
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
