"""One forward pass of a dynamic network as its static network, for counting and walking.

FLOPs counting and the latency predictor's walk need the network's static operators: every
layer called as a module, no gates. Instead of each saving and restoring modes on its own,
they run inside :func:`static_pass`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def static_pass(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with every module that has an execution mode (dynamic blocks
    and networks) in ``static`` execution; modes, train/eval flags, the blocks' records of
    their last pass and the network's last input shape are as before afterwards."""
    modes = [(m, m.execution) for m in model.modules() if hasattr(m, "execution")]
    records = [(m, m.last, m.last_decision) for m, _ in modes if hasattr(m, "last_decision")]
    training = [(m, m.training) for m in model.modules()]
    shapes = [(m, m.input_shape) for m in model.modules() if hasattr(m, "input_shape")]
    try:
        model.eval()
        for module, _ in modes:
            module.execution = "static"
        yield model
    finally:
        for module, mode in modes:
            module.execution = mode
        for module, last, decision in records:
            module.last, module.last_decision = last, decision
        for module, flag in training:
            module.training = flag
        for module, shape in shapes:
            module.input_shape = shape
