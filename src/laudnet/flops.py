"""Static and dynamic FLOPs.

FLOPs are counted as multiply-accumulates (MACs) of convolutions and linear layers, the
convention of the papers ("ResNet-50 has 4.1 GFLOPs"). ``torch.utils.flop_counter``
counts two FLOPs per MAC; ``static_macs`` equals half its total.
"""

from __future__ import annotations

import torch
from torch import nn

from . import checks
from .gates import Masker
from .static_pass import static_pass


def conv_macs(conv: nn.Conv2d, out_height: int, out_width: int,
              in_channels: int | None = None, out_channels: int | None = None) -> int:
    """MACs of ``conv`` producing an ``out_height × out_width`` map, optionally with only
    ``in_channels`` / ``out_channels`` of its channels (channel slicing; counts may be
    tensors). Slicing a grouped (or depthwise) convolution keeps whole groups, so each
    output channel still reads ``conv.in_channels / conv.groups`` inputs."""
    kh, kw = conv.kernel_size
    cout = conv.out_channels if out_channels is None else out_channels
    if conv.groups == 1:
        fan_in = conv.in_channels if in_channels is None else in_channels
    else:
        fan_in = conv.in_channels // conv.groups
    return kh * kw * fan_in * cout * out_height * out_width


def conv_output_size(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    """Output map size of ``conv`` for an ``height × width`` input."""
    sizes = []
    for n, k, s, p, d in zip((height, width), conv.kernel_size, conv.stride, conv.padding, conv.dilation):
        sizes.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
    return sizes[0], sizes[1]


def static_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs per sample of ``model`` without gates, for inputs of shape ``(C, H, W)``.

    Runs one forward pass on zeros as the static network (:func:`static_pass`) and counts
    convolutions and linear layers outside the maskers. Works for plain torchvision models
    too.
    """
    if not isinstance(input_shape, (tuple, list, torch.Size)) or len(input_shape) != 3:
        raise TypeError(f"input_shape must be (C, H, W), got {input_shape!r}")
    for name, value in zip(("channels", "height", "width"), input_shape):
        checks.positive_int(f"input_shape {name}", value)
    inside_maskers = {id(sub) for m in model.modules() if isinstance(m, Masker) for sub in m.modules()}
    total = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += conv_macs(module, output.shape[-2], output.shape[-1])
        else:
            total += module.in_features * module.out_features * (output.numel() // output.shape[-1])

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in inside_maskers]
    try:
        param = next(model.parameters())
        with static_pass(model), torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
    return total
