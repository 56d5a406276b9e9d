"""Running a model for scoring: where its inputs go, and eval mode without gradients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["eval_mode", "input_device"]


def input_device(model: nn.Module) -> torch.device:
    """Where inputs must go: the device of the first parameter (CPU for parameter-free stubs)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` and ``no_grad`` for the duration, restoring the training flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
