"""A convolution and its batch norm as GEMM operands on gathered pixel rows
(:mod:`laudnet.sparse.pixels`), and their slicing to active channels.

The GEMM operand is a *view* of the convolution's own weight, kept in channels-last memory
(so that its rows run over ``(ky, kx, c)``, the order of gathered taps): sparse execution
holds no second copy of the weights. The batch norm is applied to the GEMM output as a
per-channel ``scale`` and ``shift`` (one fused pass).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def direct_convolution(kernel: int, out_pixels: int, in_channels: int, groups: int = 1) -> bool:
    """Whether a whole-map convolution runs faster as a direct convolution than as a GEMM
    on gathered taps: on CPU, direct k×k convolutions win on large maps with few channels,
    GEMMs on small maps with many (measured on ResNet shapes, see benchmarks/); grouped and
    depthwise ones always win (their GEMMs are small and many)."""
    return kernel > 1 and (groups > 1 or out_pixels > in_channels)


def select_channels(tensor: Tensor, dim: int, channels: Tensor, group: int = 1) -> Tensor:
    """``tensor.index_select(dim, channels)``, copying runs of ``group`` adjacent channels
    at once when ``channels`` consists of whole groups of that size (fewer, longer copies)."""
    size = tensor.shape[dim]
    if group == 1 or size % group or channels.numel() % group:
        return tensor.index_select(dim, channels)
    shape = list(tensor.shape)
    grouped = tensor.reshape(shape[:dim] + [size // group, group] + shape[dim + 1:])
    picked = grouped.index_select(dim, channels.view(-1, group)[:, 0] // group)
    return picked.reshape(shape[:dim] + [channels.numel()] + shape[dim + 1:])


def channels_last_weight(conv: nn.Conv2d) -> Tensor:
    """``conv.weight`` in channels-last memory, re-laid in place (values unchanged) if needed."""
    weight = conv.weight
    if weight.dim() == 4 and not weight.is_contiguous(memory_format=torch.channels_last):
        with torch.no_grad():
            weight.data = weight.data.contiguous(memory_format=torch.channels_last)
    return weight.detach()


class PackedConv:
    """``norm(conv(x))`` as ``(taps @ matrix) * scale + shift`` on gathered ``(m, k², C_in)``
    taps. Standard convolutions are one GEMM, depthwise ones a batched product over
    channels, grouped ones a batched GEMM over groups."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module) -> None:
        self.__dict__["weight"] = channels_last_weight(conv)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(self.weight[:, 0, 0, 0])
        if isinstance(norm, nn.BatchNorm2d):
            self.scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
            self.shift = (bias - norm.running_mean) * self.scale + norm.bias.detach()
        elif isinstance(norm, nn.Identity):
            self.scale, self.shift = torch.ones_like(bias), bias
        else:
            raise TypeError(f"sparse execution supports BatchNorm2d or Identity norms, not {type(norm).__name__}")
        self.kernel, self.stride = conv.kernel_size[0], conv.stride[0]
        self.padding, self.dilation = conv.padding[0], conv.dilation[0]
        self.groups = conv.groups
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        self.input_index: Tensor | None = None  # for sliced grouped convolutions: the inputs they read

    @functools.cached_property
    def matrix(self) -> Tensor:
        """GEMM operand (a view of the channels-last weight): ``(k²·C_in, C_out)``;
        depthwise ``(k², C)``; grouped ``(groups, k²·C_in/groups, C_out/groups)``."""
        w = self.weight.permute(0, 2, 3, 1)  # (C_out, kh, kw, C_in/groups), contiguous
        if self.groups == 1:
            return w.reshape(self.out_channels, -1).t()
        if self.depthwise:
            return w.reshape(self.out_channels, -1).t()
        return w.reshape(self.groups, self.out_channels // self.groups, -1).transpose(1, 2)

    @functools.cached_property
    def weight(self) -> Tensor:
        """``(C_out, C_in/groups, k, k)`` weight (for direct convolutions)."""
        k = self.kernel
        if self.groups == 1:
            return self.matrix.reshape(k, k, self.in_channels, self.out_channels).permute(3, 2, 0, 1)
        if self.depthwise:
            return self.matrix.t().reshape(self.out_channels, 1, k, k)
        g, cin, cout = self.groups, self.in_channels // self.groups, self.out_channels // self.groups
        return self.matrix.transpose(1, 2).reshape(g * cout, k, k, cin).permute(0, 3, 1, 2)

    def _normalize(self, h: Tensor) -> Tensor:
        return torch.addcmul(self.shift, h, self.scale, out=h)

    def conv2d_rows(self, x: Tensor) -> Tensor:
        """The convolution and norm on a whole ``(B, C_in, H, W)`` map, as pixel rows."""
        out = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        rows = out.permute(0, 2, 3, 1).reshape(-1, self.out_channels)
        return self._normalize(rows if rows.is_contiguous() else rows.contiguous())

    def rows(self, taps: Tensor, spare: bool = False) -> Tensor:
        """Outputs ``(m, C_out)`` from gathered taps ``(m, k², C_in)``. With ``spare`` the
        result has one more row, of zeros, that the padding taps of a next convolution read
        (see :func:`laudnet.sparse.pixels.gather_taps`)."""
        m = taps.shape[0]
        out = taps.new_empty(m + 1, self.out_channels) if spare else None
        if self.groups == 1:
            h = torch.mm(taps.reshape(m, -1), self.matrix, out=None if out is None else out[:m])
        else:
            if self.depthwise:  # sum over the k² taps of tap × weight, channel by channel
                h = taps.new_zeros(m, self.out_channels) if out is None else out[:m].zero_()
                for k in range(taps.shape[1]):
                    h.addcmul_(taps[:, k], self.matrix[k])  # the only in-place addcmul: MACs counted by it
            else:
                g = self.groups
                grouped = taps.view(m, taps.shape[1], g, -1).permute(2, 0, 1, 3).reshape(g, m, -1)
                h = torch.bmm(grouped, self.matrix).permute(1, 0, 2).reshape(m, -1)
                h = h.contiguous() if out is None else out[:m].copy_(h)
        self._normalize(h)
        if out is None:
            return h
        out[m].zero_()
        return out

    def sliced(self, in_channels: Tensor | None, out_channels: Tensor | None, group: int = 1) -> "PackedConv":
        """The same convolution restricted to some input and/or output channels.

        Depthwise and grouped convolutions keep input and output channels together: a
        depthwise one takes ``out_channels`` for both; a grouped one must be given whole
        convolution groups. The weight rows of the active output channels are copied
        (``index_select``), then, if inputs are sliced too, their active columns; the
        channels come in whole runs of ``group`` (the channel gate's granularity), copied
        a run at a time.
        """
        part = object.__new__(PackedConv)
        part.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("weight", "matrix")})
        weight = self.weight.permute(0, 2, 3, 1)  # (C_out, kh, kw, C_in/groups), contiguous
        if out_channels is not None:
            part.scale, part.shift = self.scale[out_channels], self.shift[out_channels]
            part.out_channels = out_channels.numel()
        if self.depthwise:
            part.groups = part.in_channels = out_channels.numel()
            part.input_index = out_channels
            weight = weight.index_select(0, out_channels)
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
            part.input_index = (groups[:, None] * cin + torch.arange(cin, device=groups.device)).reshape(-1)
            weight = weight.index_select(0, out_channels)
        else:
            if out_channels is not None:
                weight = select_channels(weight, 0, out_channels, group)
            if in_channels is not None:
                weight = select_channels(weight, 3, in_channels, group)
                part.in_channels = in_channels.numel()
        part.__dict__["weight"] = weight.permute(0, 3, 1, 2)  # channels-last view
        return part


def pack_key(pairs: list[tuple[nn.Conv2d, nn.Module]]) -> tuple:
    """Identity and version of the tensors of (convolution, norm) pairs: changes when a
    weight or a batch-norm statistic is updated in place or replaced, so packed operands
    are rebuilt."""
    key = []
    for conv, norm in pairs:
        for t in (conv.weight, conv.bias, getattr(norm, "weight", None), getattr(norm, "bias", None),
                  getattr(norm, "running_mean", None), getattr(norm, "running_var", None)):
            if t is not None:
                key.append((t.data_ptr(), t._version))
    return tuple(key)
