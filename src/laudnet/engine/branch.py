"""A residual branch as the sparse engine runs it: its units, their packed operands, the
shortcut and the residual epilogue, and the plans of those operators.

A residual block computes ``out = act(identity + branch(x))``; its branch is a chain of
*units* (convolution → norm → optional activation [→ squeeze-excitation]). Feature maps are
channels-last pixel rows (:mod:`laudnet.sparse.pixels`), batch norms are folded into the
convolutions (:class:`~laudnet.sparse.packed.PackedConv`), and each unit runs where it is
needed: at every pixel of a whole map (a direct convolution), at some pixel rows (a GEMM
on gathered receptive-field taps), on some samples, on some channels. The executors of the
paradigms (:mod:`.spatial`, :mod:`.channel`, :mod:`.layer`) say which; nothing here knows
about gates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..flops import conv_macs, conv_output_size
from ..sparse.extension import extension
from ..sparse.packed import FOLDED_NORMS, PackedConv, direct_convolution, pack_key
from ..sparse.plan import INDEX_OPS_PER_SPARSE_UNIT, Op, conv_op, gemm_op, memory_op
from ..sparse.pixels import compact_index, from_rows, gather_taps, neighbor_table, pixel_rows


@dataclass
class Unit:
    """One step of a residual branch: ``act(norm(conv(x)))``, optionally followed by
    squeeze-excitation.

    ``act`` is a ``torch.nn.functional`` activation (sparse execution calls it with
    ``inplace=True`` on tensors it owns, or fuses it into the convolution)."""

    conv: nn.Conv2d
    norm: nn.BatchNorm2d
    act: Callable[..., Tensor] | None
    se: nn.Module | None = None


def excite(se: nn.Module, pooled: Tensor, channels: Tensor | None = None) -> Tensor:
    """``(N, C, 1, 1)`` excitation of torchvision's ``SqueezeExcitation`` from channel means
    ``(N, C)``, optionally restricted to ``channels`` (skipped ones contribute zero means)."""
    w1, w2, b2 = se.fc1.weight, se.fc2.weight, se.fc2.bias
    if channels is not None:
        w1, w2, b2 = w1[:, channels], w2[channels], b2[channels]
    hidden = se.activation(F.conv2d(pooled[:, :, None, None], w1, se.fc1.bias))
    return se.scale_activation(F.conv2d(hidden, w2, b2))


def se_macs(se: nn.Module, channels: int | Tensor | None = None) -> int | Tensor:
    """MACs of one excitation, on ``channels`` of its channels if given."""
    return conv_macs(se.fc1, 1, 1, in_channels=channels) + conv_macs(se.fc2, 1, 1, out_channels=channels)


class Branch:
    """The units and shortcut of one residual block, run by the sparse engine.

    ``out_act`` is the block's output activation (``None`` for none). ``reuse_input`` says
    that the block's input is an intermediate that nothing reads after the block and that
    ``out_act`` leaves unchanged (a ReLU output before a ReLU block): the epilogue then
    writes the output into the input's memory instead of copying the identity.
    """

    def __init__(self, units: list[Unit], shortcut: nn.Module | None, out_act: Callable[..., Tensor] | None) -> None:
        self.units = units
        self.shortcut_module = shortcut
        self.out_act = out_act
        self.reuse_input = False
        self._sizes: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._packed: tuple[tuple, tuple[list[PackedConv], PackedConv | None]] | None = None

    def __getstate__(self) -> dict:
        """Copies and pickles leave the packed operands out (derived from the weights,
        rebuilt on use; oneDNN's packed layouts can be neither copied nor pickled)."""
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    # ----------------------------------------------------------------- geometry
    def sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Map size at the input of the block and at the output of each unit."""
        key = (height, width)
        if key not in self._sizes:
            sizes = [key]
            for unit in self.units:
                sizes.append(conv_output_size(unit.conv, *sizes[-1]))
            self._sizes[key] = sizes
        return self._sizes[key]

    def geometry(self, height: int, width: int) -> list[list[int]]:
        """Per unit: kernel, stride, padding, input and output map sizes, and whether it
        gathers taps (the C++ kernels' description of the branch)."""
        sizes = self.sizes(height, width)
        return [[u.conv.kernel_size[0], u.conv.stride[0], u.conv.padding[0], *sizes[i], *sizes[i + 1],
                 int(not (u.conv.kernel_size[0] == 1 and u.conv.stride[0] == 1))]
                for i, u in enumerate(self.units)]

    @property
    def out_channels(self) -> int:
        return self.units[-1].conv.out_channels

    # ----------------------------------------------------------------- operands
    def _shortcut_pair(self) -> tuple[nn.Conv2d, nn.Module] | None:
        """The shortcut's convolution and norm when it is just those two (it then runs
        packed, the norm folded)."""
        layers = list(self.shortcut_module.children()) if self.shortcut_module is not None else []
        norms = (*FOLDED_NORMS, nn.Identity)
        if len(layers) == 2 and isinstance(layers[0], nn.Conv2d) and isinstance(layers[1], norms):
            return layers[0], layers[1]
        return None

    def _operands(self) -> tuple[list[PackedConv], PackedConv | None]:
        pairs = [(u.conv, u.norm) for u in self.units]
        shortcut = self._shortcut_pair()
        key = pack_key(pairs + ([shortcut] if shortcut is not None else []))
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, ([PackedConv(*pair) for pair in pairs],
                                  None if shortcut is None else PackedConv(*shortcut)))
        return self._packed[1]

    def packed(self) -> list[PackedConv]:
        """The units' operands, norms folded, rebuilt when a weight or statistic changes."""
        return self._operands()[0]

    def shortcut(self, x: Tensor) -> Tensor:
        """The identity branch of channels-last ``x``, packed where it can be."""
        if self.shortcut_module is None:
            return x
        packed = self._operands()[1]
        return self.shortcut_module(x) if packed is None else packed.map(x)

    def zero_response(self) -> Tensor:
        """``(1, C_out)``: the last unit's output when all its inputs are zero."""
        last = self.units[-1]
        h = self.packed()[-1].bias[None, :]
        return h if last.act is None else last.act(h)

    # ----------------------------------------------------------------- execution
    def rows(self, x: Tensor, convs: list[PackedConv], unit_rows: list[Tensor | None],
             scale_unit: tuple[int, Tensor] | None = None, active: Tensor | None = None,
             channels: Tensor | None = None, unit_taps: list[Tensor | None] | None = None,
             unit_mask: Tensor | None = None, residual: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Run the units on channels-last ``x``, each at its pixel rows (``None``: every
        pixel). Returns the last unit's output rows and their pixel indices (``None``:
        every pixel). ``scale_unit = (i, (B, C))`` multiplies unit i's output per sample
        (every-pixel units only). Squeeze-excitation averages over the block's ``active``
        output rows (``None``: all), with its weights restricted to ``channels`` if given.
        ``unit_taps`` may give the gathered taps of units on a subset of pixels, as the C++
        kernels compute them. ``unit_mask`` ``(B, C)`` multiplies the outputs of every unit but
        the last per sample, before squeeze-excitation (every-pixel units only): the channel
        masks of samples that run together on the union of their channels. ``residual``
        (the identity's pixel rows, every pixel computed, see :meth:`fuses_residual`) is
        added to the last unit's output and the block's activation applied in the same
        call: the result is then the block's output."""
        batch = x.shape[0]
        sizes = self.sizes(*x.shape[-2:])
        source, source_rows = pixel_rows(x), None
        if convs[0].input_index is not None:  # a sliced grouped first unit reads its groups' inputs
            source = source.index_select(1, convs[0].input_index)
        last = len(convs) - 1
        for i, (unit, conv, rows) in enumerate(zip(self.units, convs, unit_rows)):
            act, added = (self.out_act, residual) if i == last and residual is not None else (unit.act, None)
            if rows is None and direct_convolution(conv.kernel, conv.stride, source_rows is None):
                out_size = sizes[i + 1]
                h = pixel_rows(conv.map(from_rows(source, batch, *sizes[i]), act,
                                        None if added is None else from_rows(added, batch, *out_size)))
            elif conv.kernel == 1 and conv.stride == 1:  # pointwise: the same pixels in and out
                if source_rows is None and rows is not None:
                    source = source.index_select(0, rows)
                h = conv.rows(source.unsqueeze(1), act, added, fixed_rows=rows is None)
            else:
                taps = None if unit_taps is None else unit_taps[i]
                if taps is None:
                    table = neighbor_table(batch, sizes[i], sizes[i + 1], conv.kernel, conv.stride,
                                           conv.padding, conv.dilation, x.device)
                    taps = table if rows is None else table.index_select(0, rows)
                    if source_rows is not None:
                        taps = compact_index(source_rows, batch * sizes[i][0] * sizes[i][1])[taps]
                h = conv.rows(gather_taps(source, taps), act, added, fixed_rows=rows is None)
            if unit_mask is not None and i < last:
                h.view(batch, -1, h.shape[1]).mul_(unit_mask[:, None, :])
            if unit.se is not None:
                self._excite_rows(unit.se, h, rows, active, batch, sizes[i + 1], channels)
            if scale_unit is not None and scale_unit[0] == i:
                h.view(batch, -1, h.shape[1]).mul_(scale_unit[1][:, None, :])
            source, source_rows = h, rows
        return source, source_rows

    @staticmethod
    def _excite_rows(se: nn.Module, h: Tensor, rows: Tensor | None, active: Tensor | None, batch: int,
                     size: tuple[int, int], channels: Tensor | None) -> None:
        """Squeeze-excitation, in place, of pixel rows ``h`` (at ``rows``, ``None``: all),
        the means taken over the ``active`` rows of each sample (``None``: all its pixels).
        Samples without active rows get no excitation (they add nothing to the output)."""
        pixels, width = size[0] * size[1], h.shape[1]
        if active is None:
            excitation = excite(se, h.view(batch, pixels, width).mean(dim=1), channels).view(batch, 1, width)
            h.view(batch, pixels, width).mul_(excitation)
            return
        present, sample = torch.unique(active // pixels, return_inverse=True)
        values = h if rows is not None else h.index_select(0, active)  # rows, if given, are the active ones
        sums = h.new_zeros(present.numel(), width).index_add_(0, sample, values)
        counts = torch.bincount(sample, minlength=present.numel()).to(h.dtype)
        excitation = excite(se, sums / counts[:, None], channels).view(-1, width)
        if rows is not None:
            h.mul_(excitation[sample])
        else:
            table = h.new_ones(batch, width).index_copy_(0, present, excitation)
            h.view(batch, pixels, width).mul_(table[:, None, :])

    def fuses_residual(self) -> bool:
        """Whether the residual add and the block's activation can run inside the last
        unit's operator: its own output needs no activation or excitation first."""
        last = self.units[-1]
        return last.act is None and last.se is None

    def dense(self, x: Tensor, identity: Tensor, convs: list[PackedConv], **options) -> Tensor:
        """``act(identity + branch(x))`` with every pixel of every sample computed, the
        residual fused into the last unit where it can be (``options``: those of
        :meth:`rows`)."""
        every = [None] * len(convs)
        if not self.fuses_residual():
            return self.add_rows(x, identity, self.rows(x, convs, every, **options)[0], None)
        out = self.rows(x, convs, every, residual=pixel_rows(identity), **options)[0]
        return from_rows(out, identity.shape[0], *identity.shape[-2:])

    def samples(self, x: Tensor, samples: Tensor, convs: list[PackedConv],
                scale_unit: tuple[int, Tensor] | None = None, channels: Tensor | None = None,
                unit_mask: Tensor | None = None) -> Tensor:
        """The branch at every pixel of the ``samples`` of ``x``, as pixel rows."""
        if samples.numel() < x.shape[0]:  # copy the samples' pixel rows (x is channels-last)
            batch, channels_in, height, width = x.shape
            picked = pixel_rows(x).view(batch, -1).index_select(0, samples)
            x = from_rows(picked.view(-1, channels_in), samples.numel(), height, width)
        return self.rows(x, convs, [None] * len(convs), scale_unit, channels=channels, unit_mask=unit_mask)[0]

    def _owns_identity(self, x: Tensor, identity: Tensor) -> tuple[bool, bool]:
        """Whether the epilogue may write into the identity, and whether the output
        activation leaves the identity unchanged where the branch adds nothing."""
        clean = self.out_act is None or (identity is x and self.reuse_input)
        return identity is not x or self.reuse_input, clean

    def add_rows(self, x: Tensor, identity: Tensor, h: Tensor, rows: Tensor | None) -> Tensor:
        """``act(identity + h)`` where ``h`` holds the branch at pixel ``rows`` (``None``:
        all); ``act(identity)`` elsewhere. Channels-last result."""
        batch, _, height, width = identity.shape
        ident = pixel_rows(identity)
        owned, clean = self._owns_identity(x, identity)
        act = self.out_act
        if rows is None:
            out = ident.add_(h) if owned else ident + h
            if act is not None:
                act(out, inplace=True)
            return from_rows(out, batch, height, width)
        kernels = extension() if ident.device.type == "cpu" else None
        if kernels is not None and act in (None, F.relu) and ident.dtype == h.dtype == torch.float32:
            out = kernels.add_rows(ident, h.contiguous(), rows, act is F.relu, owned, clean)
            return from_rows(out, batch, height, width)
        added = ident.index_select(0, rows).add_(h)
        if act is not None:
            act(added, inplace=True)
        if not owned:
            out = ident.clone() if act is None else act(ident)
        else:
            out = ident
            if not clean:
                act(out, inplace=True)
        out.index_copy_(0, rows, added)
        return from_rows(out, batch, height, width)

    def add_samples(self, x: Tensor, identity: Tensor, parts: list[tuple[Tensor, Tensor]]) -> Tensor:
        """``act(identity + h)`` for the ``(samples, h)`` in ``parts`` (``h``: the branch's
        pixel rows of those samples), ``act(identity)`` for the other samples."""
        if len(parts) == 1 and parts[0][0].numel() == x.shape[0]:
            return self.add_rows(x, identity, parts[0][1], None)
        owned, clean = self._owns_identity(x, identity)
        if not parts:
            if clean:
                return identity
            return identity if self.out_act is None else self.out_act(identity)
        out = pixel_rows(identity)
        if not owned:
            out = out.clone()
        per_sample = out.view(identity.shape[0], -1)
        for samples, h in parts:
            per_sample.index_add_(0, samples, h.reshape(samples.numel(), -1))
        if self.out_act is not None:
            self.out_act(out, inplace=True)
        return from_rows(out, identity.shape[0], *identity.shape[-2:])

    # ----------------------------------------------------------------- MACs
    def macs(self, sizes: list[tuple[int, int]]) -> int:
        """MACs of the units at every pixel of one sample, squeeze-excitation included
        (``sizes``: those of :meth:`sizes`)."""
        units = sum(conv_macs(u.conv, *size) for u, size in zip(self.units, sizes[1:]))
        return units + sum(se_macs(u.se) for u in self.units if u.se is not None)

    def shortcut_macs(self, out_size: tuple[int, int]) -> int:
        """MACs of the shortcut's convolutions for one sample with an ``out_size`` output."""
        if self.shortcut_module is None:
            return 0
        return sum(conv_macs(m, *out_size) for m in self.shortcut_module.modules() if isinstance(m, nn.Conv2d))

    # ----------------------------------------------------------------- plans
    def plan_shortcut(self, batch: int, input_shape: tuple[int, int, int]) -> list[Op]:
        """The shortcut's convolution (its norm folded, as it runs)."""
        if self.shortcut_module is None:
            return []
        conv = next(m for m in self.shortcut_module.modules() if isinstance(m, nn.Conv2d))
        out_h, out_w = self.sizes(*input_shape[1:])[-1]
        ops = [conv_op("shortcut", batch, conv.in_channels, conv.out_channels, conv.kernel_size[0],
                       conv.stride[0], conv.groups, out_h, out_w, *input_shape[1:])]
        if self._shortcut_pair() is None:  # run as its modules: the norm is a pass of its own
            pixels = batch * out_h * out_w
            ops.append(memory_op("elementwise", "shortcut.norm", pixels * conv.out_channels,
                                 shape=(pixels, conv.out_channels)))
        return ops

    def plan_pick_samples(self, samples: float, input_shape: tuple[int, int, int]) -> list[Op]:
        """Copying the pixel rows of the samples whose branch runs."""
        rows = samples * input_shape[1] * input_shape[2]
        return [memory_op("gather", "samples", rows * input_shape[0], shape=(rows, 1, input_shape[0]))]

    def plan_units(self, batch: float, sizes: list[tuple[int, int]], rows: list[float | None],
                   channels: int | None = None) -> list[Op]:
        """Ops of the units as :meth:`rows` runs them, unit i computed at ``rows[i]`` pixels
        (``None``: all of them), the inner channels restricted to ``channels`` if given."""
        ops: list[Op] = []
        units = self.units
        source_full = True
        for i, (unit, unit_rows) in enumerate(zip(units, rows)):
            conv = unit.conv
            c_in = conv.in_channels if i == 0 or channels is None else channels
            c_out = conv.out_channels if i == len(units) - 1 or channels is None else channels
            groups = conv.groups
            if groups > 1 and channels is not None:  # sliced grouped convolutions keep whole groups
                groups = max(1, conv.groups * c_out // conv.out_channels)
            kernel, (out_h, out_w) = conv.kernel_size[0], sizes[i + 1]
            count = batch * out_h * out_w if unit_rows is None else unit_rows
            if unit_rows is None and direct_convolution(kernel, conv.stride[0], source_full):
                ops.append(conv_op(f"unit{i}", batch, c_in, c_out, kernel, conv.stride[0], groups, out_h, out_w,
                                   *sizes[i]))
            else:
                if unit_rows is not None:
                    ops.append(Op("index", f"unit{i}.index", count=INDEX_OPS_PER_SPARSE_UNIT))
                if kernel > 1 or conv.stride[0] > 1 or (unit_rows is not None and source_full):
                    ops.append(memory_op("gather", f"unit{i}.gather", count * kernel * kernel * c_in,
                                         shape=(count, kernel * kernel, c_in)))
                ops.append(gemm_op(f"unit{i}", count, kernel * kernel * c_in // groups, c_out // groups, groups))
            if unit.act is not None:
                ops.append(memory_op("elementwise", f"unit{i}.act", count * c_out, shape=(count, c_out)))
            if unit.se is not None:  # channel means, the excitation per sample, the product
                ops.append(Op("masker", f"unit{i}.se", batch * se_macs(unit.se, c_out), 3 * count * c_out * 4))
            source_full = unit_rows is None
        return ops

    def plan_epilogue(self, batch: float, sizes: list[tuple[int, int]], active: float | None = None,
                      per_sample: bool = False) -> list[Op]:
        """The residual add and activation, as :meth:`add_rows` / :meth:`add_samples` run
        them: the branch adds to ``active`` pixel rows (``None``: all), per sample or per row."""
        out_c = self.out_channels
        pixels = batch * sizes[-1][0] * sizes[-1][1]
        owned = self.shortcut_module is not None or self.reuse_input
        clean = self.out_act is None or (self.shortcut_module is None and self.reuse_input)
        act = 0.0 if self.out_act is None else 1.0
        if active is None:  # add (3 accesses per element) and activation (2), in place
            accesses = (3 + 2 * act) * pixels * out_c
        elif per_sample:  # clone unless owned, index_add per sample, activation over the map
            accesses = ((0 if owned else 2) + 2 * act) * pixels * out_c + 3 * active * out_c
        else:  # pick the rows, add, activate, copy back; the other rows: a copy or an activation
            accesses = (0 if owned and clean else 2) * pixels * out_c + (7 + 2 * act) * active * out_c
        shape = (pixels, out_c, pixels if active is None else active)
        return [memory_op("epilogue", "residual", accesses / 2, shape=shape)]

    def plan_dense(self, batch: float, sizes: list[tuple[int, int]], channels: int | None = None) -> list[Op]:
        """Every pixel of every sample: the units and the epilogue (:meth:`dense`)."""
        return self.plan_units(batch, sizes, [None] * len(self.units), channels) + self.plan_epilogue(batch, sizes)
