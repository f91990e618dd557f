"""A convolution and its batch norm as one operator on whole maps or on gathered pixel
rows (:mod:`laudnet.sparse.pixels`), and its slicing to active channels.

The batch norm is folded into the weights and a bias (one copy of the weights, in
channels-last memory, so that a weight row runs over ``(ky, kx, c)``, the order of
gathered taps), and the unit's activation, and a residual added before it, run in the same
call where the backend can fuse them. Each operator shape runs on the backend measured
fastest on this machine (:mod:`laudnet.sparse.tuning`): ``aten`` (``F.conv2d`` /
``addmm``, then the activation) or ``onednn`` (oneDNN with weights pre-packed once in its
own layout, bias, residual and activation fused).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from . import tuning
from .extension import extension

Activation = Callable[..., Tensor] | None

ONEDNN_ACTIVATIONS: dict[Callable, tuple[str, list[float]]] = {F.relu: ("relu", []), F.relu6: ("hardtanh", [0.0, 6.0])}
"""Activations oneDNN fuses into a convolution, as its post-op name and scalars."""

FOLDED_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)
"""Norms folded into the convolution before them: batch norm in inference, and
torchvision's frozen batch norm (detection backbones), the same affine map of fixed
statistics."""

PACKED_SHAPES = 4
"""Operand shapes (batch sizes, map sizes) per convolution whose packed weights are kept."""


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def onednn_available(x: Tensor) -> bool:
    """Whether oneDNN's fused convolution can run on ``x`` (float32 on a CPU build with oneDNN)."""
    return _ONEDNN and x.dtype == torch.float32 and x.device.type == "cpu"


def direct_convolution(kernel: int, stride: int, source_full: bool) -> bool:
    """Whether a unit computed at every output pixel runs as a direct convolution over the
    whole map rather than as a GEMM on its pixel rows: every k×k or strided one whose input
    is a whole map (a unit whose input was computed at some pixels only reads compact rows,
    so it gathers)."""
    return source_full and (kernel > 1 or stride > 1)


def select_channels(tensor: Tensor, dim: int, channels: Tensor) -> Tensor:
    """``tensor.index_select(dim, channels)``. The last dimension of a contiguous float32
    CPU tensor is selected by the C++ kernel: PyTorch copies it element by element (about
    0.5 GB/s on a convolution's weight on a 2-core Zen 3, where selecting rows runs near
    memory speed)."""
    last = dim in (-1, tensor.dim() - 1)
    kernels = (extension() if last and tensor.device.type == "cpu" and tensor.dtype == torch.float32
               and tensor.is_contiguous() else None)
    if kernels is None:
        return tensor.index_select(dim, channels)
    rows = kernels.select_columns(tensor.reshape(-1, tensor.shape[-1]), channels)
    return rows.view(*tensor.shape[:-1], channels.numel())


def _activate(h: Tensor, act: Activation) -> Tensor:
    return h if act is None else act(h, inplace=True)


def _rows_of(out: Tensor) -> Tensor:
    """``(B, C, H, W)`` channels-last → ``(B·H·W, C)`` view."""
    return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])


def _rows_as_map(rows: Tensor) -> Tensor:
    """``(m, C)`` rows as a ``(1, C, m, 1)`` channels-last map (a view): a GEMM on rows is
    a 1×1 convolution over it."""
    return rows.view(1, rows.shape[0], 1, rows.shape[1]).permute(0, 3, 1, 2)


def _bucket(m: int) -> int:
    """Row (or pixel) counts share a kernel choice within a power of two."""
    return 1 << max(0, math.ceil(math.log2(max(m, 1))))


class PackedConv:
    """``act(norm(conv(x)) [+ residual])`` on whole channels-last maps (:meth:`map`) or on
    gathered ``(m, k², C_in)`` taps (:meth:`rows`). Standard convolutions on taps are one
    GEMM, depthwise ones a sum of per-tap products over channels (or, on oneDNN, a
    ``1 × k²`` depthwise convolution over the taps), grouped ones a batched GEMM over groups."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module) -> None:
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(weight[:, 0, 0, 0])
        if isinstance(norm, FOLDED_NORMS):
            scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
            self.bias = (bias - norm.running_mean) * scale + norm.bias.detach()
        elif isinstance(norm, nn.Identity):
            scale, self.bias = None, bias
        else:
            raise TypeError(f"sparse execution supports BatchNorm2d, FrozenBatchNorm2d or Identity norms, not {type(norm).__name__}")
        folded = weight if scale is None else weight * scale.view(-1, 1, 1, 1)
        self.weight = folded.contiguous(memory_format=torch.channels_last)
        self.kernel, self.stride = conv.kernel_size[0], conv.stride[0]
        self.padding, self.dilation = conv.padding[0], conv.dilation[0]
        self.groups = conv.groups
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        self.input_index: Tensor | None = None  # for sliced grouped convolutions: the inputs they read
        self.sliced_copy = False  # made per call by :meth:`sliced`: packing would cost every call
        self._chosen: dict[tuple, Callable] = {}  # operand sizes → the chosen backend's method
        self._onednn_packed: dict[tuple, Tensor] = {}  # operand shape → weight in oneDNN's layout

    # ----------------------------------------------------------------- operands
    @functools.cached_property
    def matrix(self) -> Tensor:
        """GEMM operand (a view of the weight): ``(k²·C_in, C_out)``; depthwise ``(k², C)``;
        grouped ``(groups, k²·C_in/groups, C_out/groups)``."""
        w = self.weight.permute(0, 2, 3, 1)  # (C_out, kh, kw, C_in/groups), contiguous
        if self.groups == 1 or self.depthwise:
            return w.reshape(self.out_channels, -1).t()
        return w.reshape(self.groups, self.out_channels // self.groups, -1).transpose(1, 2)

    def _packed(self, key: tuple, weight: Tensor, conv: tuple, input_size: list[int]) -> Tensor:
        """``weight`` in oneDNN's layout for inputs of exactly ``input_size``, packed once per
        size. oneDNN picks the layout by the input's shape, and a weight packed for one shape
        and run on another can fall to a reference kernel 30-100x slower (seen for GEMM row
        counts such as 4, 16 or 31 against a weight packed for 1000): packed weights are
        only ever used for the shape they were packed for."""
        if self.sliced_copy:  # made per call: packing would cost every call
            return weight
        packed = self._onednn_packed.get(key)
        if packed is None:
            if len(self._onednn_packed) >= PACKED_SHAPES:
                self._onednn_packed.pop(next(iter(self._onednn_packed)))
            packed = self._onednn_packed[key] = torch.ops.mkldnn._reorder_convolution_weight(
                weight.contiguous(), *conv, input_size)
        return packed

    # ----------------------------------------------------------------- backends
    def _onednn(self, x: Tensor, weight: Tensor, conv: tuple, act: Activation, residual: Tensor | None) -> Tensor:
        """oneDNN's convolution with bias, residual and activation fused (an activation it
        cannot fuse runs after)."""
        if residual is None:
            name, scalars = ONEDNN_ACTIVATIONS.get(act, ("none", []))
            out = torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, *conv, name, scalars, "")
            return out if act is None or act in ONEDNN_ACTIVATIONS else _activate(out, act)
        fused = act is F.relu  # after a residual add, oneDNN fuses ReLU only
        out = torch.ops.mkldnn._convolution_pointwise.binary(x, residual, weight, self.bias, *conv, "add", None,
                                                             "relu" if fused else None, [], None)
        return out if fused else _activate(out, act)

    def _map_aten(self, x: Tensor, act: Activation, residual: Tensor | None) -> Tensor:
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        out = out.contiguous(memory_format=torch.channels_last)
        if residual is not None:
            out.add_(residual)
        return _activate(out, act)

    def _map_onednn(self, x: Tensor, act: Activation, residual: Tensor | None) -> Tensor:
        conv = ([self.padding] * 2, [self.stride] * 2, [self.dilation] * 2, self.groups)
        weight = self._packed(("map", *x.shape), self.weight, conv, list(x.shape))
        return self._onednn(x, weight, conv, act, residual)

    def _gemm_aten(self, a: Tensor, act: Activation, residual: Tensor | None) -> Tensor:
        out = torch.addmm(self.bias, a, self.matrix)
        if residual is not None:
            out.add_(residual)
        return _activate(out, act)

    def _gemm_onednn(self, a: Tensor, act: Activation, residual: Tensor | None, fixed_rows: bool = False) -> Tensor:
        conv = ([0, 0], [1, 1], [1, 1], 1)
        weight = self.matrix.t().reshape(self.out_channels, -1, 1, 1)
        if fixed_rows:  # the same row count every call: a weight packed for it is reused
            weight = self._packed(("gemm", *a.shape), weight, conv, [1, a.shape[1], a.shape[0], 1])
        out = self._onednn(_rows_as_map(a), weight, conv, act, None if residual is None else _rows_as_map(residual))
        return _rows_of(out)

    def _packed_gemm_onednn(self, a: Tensor, act: Activation, residual: Tensor | None) -> Tensor:
        return self._gemm_onednn(a, act, residual, fixed_rows=True)

    def _run(self, kind: str, size: tuple, operand: Tensor, act: Activation, residual: Tensor | None,
             aten: Callable[..., Tensor], onednn: Callable[..., Tensor]) -> Tensor:
        """Run operator ``kind`` on operands of ``size`` with the backend chosen for it,
        ``aten`` or ``onednn`` (remembered per operator: this runs for every unit of every
        block)."""
        memo = (kind, size, act, residual is None, operand.dtype, operand.device.type, tuning.forced())
        run = self._chosen.get(memo)
        if run is None:
            runs = {"aten": aten, "onednn": onednn} if onednn_available(operand) else {"aten": aten}
            key = (f"{kind}:{'x'.join(map(str, size))}>{self.out_channels}:k{self.kernel}s{self.stride}"
                   f"p{self.padding}d{self.dilation}g{self.groups}:{'sliced' if self.sliced_copy else 'packed'}:"
                   f"{getattr(act, '__name__', act)}:{'residual' if residual is not None else '-'}")
            backend = tuning.choose(key, {name: (lambda f=f: f(operand, act, residual))  # a residual is only read
                                          for name, f in runs.items()})
            run = self._chosen[memo] = runs[backend]
        return run(operand, act, residual)

    def _depthwise_aten(self, taps: Tensor, act: Activation, residual: Tensor | None) -> Tensor:
        """Depthwise on gathered taps ``(m, k², C)``: the sum over the taps of tap × weight,
        channel by channel."""
        h = self.bias.expand(taps.shape[0], -1).clone()
        for k in range(taps.shape[1]):
            h.addcmul_(taps[:, k], self.matrix[k])  # the only in-place addcmul: MACs counted by it
        if residual is not None:
            h.add_(residual)
        return _activate(h, act)

    def _depthwise_onednn(self, taps: Tensor, act: Activation, residual: Tensor | None) -> Tensor:
        """The same sum as one oneDNN call: the taps, laid out as a ``1 × m × k²`` channels-last
        map, convolved by a ``1 × k²`` depthwise kernel (bias, residual and activation fused)."""
        m, k2, channels = taps.shape
        rows_map = taps.reshape(1, m, k2, channels).permute(0, 3, 1, 2)
        weight = self.weight.reshape(channels, 1, 1, k2)
        added = None if residual is None else residual.reshape(1, m, 1, channels).permute(0, 3, 1, 2)
        out = self._onednn(rows_map, weight, ([0, 0], [1, 1], [1, 1], channels), act, added)
        return out.permute(0, 2, 3, 1).reshape(m, channels)

    # ----------------------------------------------------------------- operators
    def map(self, x: Tensor, act: Activation = None, residual: Tensor | None = None) -> Tensor:
        """``act(conv(x) + bias [+ residual])`` on a whole ``(B, C_in, H, W)`` channels-last
        map; a channels-last ``(B, C_out, H', W')`` result."""
        x = x.contiguous(memory_format=torch.channels_last)
        size = (x.shape[0], x.shape[1], _bucket(x.shape[2] * x.shape[3]))  # a detector's image sizes vary
        return self._run("map", size, x, act, residual, self._map_aten, self._map_onednn)

    def gemm(self, a: Tensor, act: Activation = None, residual: Tensor | None = None,
             fixed_rows: bool = False) -> Tensor:
        """``act(a @ matrix + bias [+ residual])`` on ``(m, k²·C_in)`` rows (standard
        convolutions): ``(m, C_out)``. ``fixed_rows``: the rows are whole maps, the same
        count every call (oneDNN may then use a weight packed for that count; row counts of
        gathered pixels vary, and within a power of two share a kernel choice)."""
        if fixed_rows:
            return self._run("packed_gemm", (_bucket(a.shape[0]), a.shape[1]), a, act, residual, self._gemm_aten,
                             self._packed_gemm_onednn)
        return self._run("gemm", (_bucket(a.shape[0]), a.shape[1]), a, act, residual, self._gemm_aten,
                         self._gemm_onednn)

    def map_rows(self, x: Tensor, act: Activation = None) -> Tensor:
        """:meth:`map` as ``(B·H'·W', C_out)`` pixel rows."""
        return _rows_of(self.map(x, act))

    def rows(self, taps: Tensor, act: Activation = None, residual: Tensor | None = None,
             fixed_rows: bool = False) -> Tensor:
        """``act(conv + bias [+ residual])``, ``(m, C_out)``, from gathered taps ``(m, k², C_in)``
        (``fixed_rows``: see :meth:`gemm`)."""
        m = taps.shape[0]
        if self.groups == 1:
            return self.gemm(taps.reshape(m, -1), act, residual, fixed_rows)
        if self.depthwise:
            return self._run("depthwise", (_bucket(m), taps.shape[1]), taps, act, residual, self._depthwise_aten,
                             self._depthwise_onednn)
        g = self.groups
        grouped = taps.view(m, taps.shape[1], g, -1).permute(2, 0, 1, 3).reshape(g, m, -1)
        h = torch.baddbmm(self.bias.view(g, 1, -1), grouped, self.matrix).permute(1, 0, 2).reshape(m, -1)
        if residual is not None:
            h.add_(residual)
        return _activate(h, act)

    def sliced(self, in_channels: Tensor | None, out_channels: Tensor | None) -> "PackedConv":
        """The same convolution restricted to some input and/or output channels.

        Depthwise and grouped convolutions keep input and output channels together: a
        depthwise one takes ``out_channels`` for both; a grouped one must be given whole
        convolution groups. The weight rows of the active output channels are copied
        (``index_select``), then, if inputs are sliced too, their active columns
        (:func:`select_channels`).
        """
        part = object.__new__(PackedConv)
        part.__dict__.update({k: v for k, v in self.__dict__.items()
                              if k not in ("weight", "matrix", "_onednn_packed", "_chosen")})
        part.sliced_copy = True
        part._chosen, part._onednn_packed = {}, {}
        weight = self.weight.permute(0, 2, 3, 1)  # (C_out, kh, kw, C_in/groups), contiguous
        if out_channels is not None:
            part.bias = self.bias[out_channels]
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
                weight = weight.index_select(0, out_channels)
            if in_channels is not None:
                weight = select_channels(weight, 3, in_channels)
                part.in_channels = in_channels.numel()
        part.weight = weight.permute(0, 3, 1, 2)  # channels-last view
        return part


def pack_key(pairs: list[tuple[nn.Conv2d, nn.Module]]) -> tuple:
    """Identity and version of the tensors of (convolution, norm) pairs: changes when a
    weight or a batch-norm statistic is updated in place or replaced, so packed operands
    are rebuilt. (Reads the modules' tensor dictionaries directly: this runs on every
    sparse forward pass of every block.)"""
    key = []
    for pair in pairs:
        for module in pair:
            for tensors in (module._parameters, module._buffers):
                for t in tensors.values():
                    if t is not None:
                        key.append(t.data_ptr())
                        key.append(t._version)
    return tuple(key)
