"""Inference weights of a convolution with its batch norm folded in, laid out for GEMMs on
gathered pixel rows (:mod:`laudnet.sparse.pixels`) and for channel slicing."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def direct_convolution(kernel: int, out_pixels: int, in_channels: int) -> bool:
    """Whether a whole-map convolution runs faster as a direct convolution than as a GEMM
    on gathered taps: on CPU, direct k×k convolutions win on large maps with few channels,
    GEMMs on small maps with many (measured on ResNet shapes, see benchmarks/)."""
    return kernel > 1 and out_pixels > in_channels


class PackedConv:
    """``norm(conv(x))`` as ``taps @ matrix + bias`` on gathered ``(m, k², C_in)`` taps.

    Standard convolutions become one GEMM, depthwise ones a batched product over channels,
    grouped ones a batched GEMM over groups. ``weight`` is the folded
    ``(C_out, C_in/groups, k, k)`` tensor for direct convolutions; ``weight`` and
    ``matrix`` are each derived from the other when first needed.
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.Module) -> None:
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(weight[:, 0, 0, 0])
        if isinstance(norm, nn.BatchNorm2d):
            scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = (bias - norm.running_mean) * scale + norm.bias.detach()
        elif not isinstance(norm, nn.Identity):
            raise TypeError(f"sparse execution folds BatchNorm2d or Identity, not {type(norm).__name__}")
        self.__dict__["weight"] = weight.contiguous()
        self.bias = bias
        self.kernel, self.stride = conv.kernel_size[0], conv.stride[0]
        self.padding, self.dilation = conv.padding[0], conv.dilation[0]
        self.groups = conv.groups
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        self.input_index: Tensor | None = None  # for sliced grouped convolutions: the inputs they read

    @functools.cached_property
    def matrix(self) -> Tensor:
        """GEMM operand: ``(k²·C_in, C_out)`` with rows in ``(ky, kx, c)`` order; depthwise
        ``(k², C)``; grouped ``(groups, k²·C_in/groups, C_out/groups)``."""
        k, k2, w = self.kernel, self.kernel * self.kernel, self.weight
        if self.groups == 1:
            return w.permute(2, 3, 1, 0).reshape(k2 * self.in_channels, self.out_channels).contiguous()
        if self.depthwise:
            return w.reshape(self.out_channels, k2).t().contiguous()
        g, cin, cout = self.groups, self.in_channels // self.groups, self.out_channels // self.groups
        return w.view(g, cout, cin, k, k).permute(0, 3, 4, 2, 1).reshape(g, k2 * cin, cout).contiguous()

    @functools.cached_property
    def weight(self) -> Tensor:
        """The folded ``(C_out, C_in/groups, k, k)`` weight."""
        k, m = self.kernel, self.matrix
        if self.groups == 1:
            return m.reshape(k, k, self.in_channels, self.out_channels).permute(3, 2, 0, 1)
        if self.depthwise:
            return m.t().reshape(self.out_channels, 1, k, k)
        g, cin, cout = self.groups, self.in_channels // self.groups, self.out_channels // self.groups
        return m.view(g, k, k, cin, cout).permute(0, 4, 3, 1, 2).reshape(self.out_channels, cin, k, k)

    def conv2d(self, x: Tensor) -> Tensor:
        """The folded convolution on a whole ``(B, C_in, H, W)`` map."""
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def rows(self, taps: Tensor) -> Tensor:
        """Outputs ``(m, C_out)`` from gathered taps ``(m, k², C_in)``."""
        m = taps.shape[0]
        if self.groups == 1:
            return torch.addmm(self.bias, taps.reshape(m, -1), self.matrix)
        if self.depthwise:  # (C, m, k²) @ (C, k², 1)
            per_channel = torch.bmm(taps.permute(2, 0, 1), self.matrix.t().unsqueeze(2))
            return per_channel[:, :, 0].t() + self.bias
        g = self.groups
        grouped = taps.view(m, taps.shape[1], g, -1).permute(2, 0, 1, 3).reshape(g, m, -1)
        return torch.bmm(grouped, self.matrix).permute(1, 0, 2).reshape(m, -1) + self.bias

    def sliced(self, in_channels: Tensor | None, out_channels: Tensor | None) -> "PackedConv":
        """The same convolution restricted to some input and/or output channels.

        Depthwise and grouped convolutions keep input and output channels together: a
        depthwise one takes ``out_channels`` for both; a grouped one must be given whole
        convolution groups. Only contiguous rows are copied (``index_select``): the output
        rows of the weight for a pointwise convolution sliced on its outputs, the tap rows
        of the GEMM operand otherwise.
        """
        part = object.__new__(PackedConv)
        part.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("weight", "matrix")})
        if out_channels is not None:
            part.bias = self.bias.index_select(0, out_channels)
            part.out_channels = out_channels.numel()
        k2 = self.kernel * self.kernel
        if self.depthwise:
            part.groups = part.in_channels = out_channels.numel()
            part.__dict__["matrix"] = self.matrix.index_select(1, out_channels)
            part.input_index = out_channels
        elif self.groups > 1:
            cout, cin = self.out_channels // self.groups, self.in_channels // self.groups
            whole = out_channels.numel() % cout == 0
            if whole:
                groups = out_channels.view(-1, cout)[:, 0] // cout
                whole = torch.equal(out_channels, (groups[:, None] * cout + torch.arange(
                    cout, device=groups.device)).reshape(-1))
            if not whole:
                raise ValueError("channel slicing of a grouped convolution needs whole groups")
            part.groups = groups.numel()
            part.in_channels = groups.numel() * cin
            part.__dict__["matrix"] = self.matrix.index_select(0, groups)
            part.input_index = (groups[:, None] * cin + torch.arange(cin, device=groups.device)).reshape(-1)
        elif in_channels is None and k2 == 1:
            rows = self.weight.view(self.out_channels, self.in_channels).index_select(0, out_channels)
            part.__dict__["matrix"] = rows.t()
        else:
            matrix = self.matrix.view(k2, self.in_channels, self.out_channels)
            if in_channels is not None:
                matrix = matrix.index_select(1, in_channels)
                part.in_channels = in_channels.numel()
            if out_channels is not None:
                matrix = matrix.index_select(2, out_channels)
            part.__dict__["matrix"] = matrix.reshape(k2 * part.in_channels, part.out_channels)
        return part


def pack_key(modules: list[nn.Module]) -> tuple:
    """Identity and version of every tensor of ``modules``: changes when a weight or a
    batch-norm statistic is updated in place or replaced, so packed weights are rebuilt."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device)
                 for m in modules for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)))
