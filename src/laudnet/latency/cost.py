"""Per-operator cost model: the latency of one plan operator (:class:`laudnet.sparse.plan.Op`)
on one device (:class:`laudnet.latency.hardware.Hardware`). Deterministic: a closed-form
function of the operator's shape, MACs and bytes and of the profile's parameters.

Both device kinds combine a compute time and a memory time,
``work = max(c, m) + (1 - overlap) · min(c, m)``, and add a fixed per-operator overhead.

**CPU** (eager PyTorch, synchronous dispatch; what the sparse engine runs here):
``time = overhead + max(compute, memory) + weights / packing bandwidth + fresh output pages``.

- ``gemm`` / ``conv``: ``compute = MACs / (peak · e · m/(m+m½) · k/(k+k½) · n/(n+n½) ·
  (1 - s · miss))`` with the GEMM dimensions ``m × k × n`` (a direct convolution as its
  implicit GEMM: ``m = B·H·W``, ``k = k²·C_in/groups``, ``n = C_out/groups``): small
  dimensions fill the vector units and amortise the packing less, and a streamed operand
  (``miss``: the share of the row operand beyond the L2 cache) costs a share ``s`` of the
  speed; output channels that are not a multiple of the vector width (FP32 lanes / 2, two
  FMA units assumed) cost a fitted factor. The weights are packed (MKL) or reordered into
  oneDNN's blocked layout at every call, at a fitted bandwidth (measured for k×k and strided
  convolutions; unit-stride 1×1 ones show no such cost). Convolutions with fewer
  input channels than the vector width (stems) and depthwise convolutions get their own
  efficiency factors.
- memory: ``bytes / efficiency of the kind`` moved at the bandwidth of the memory hierarchy:
  the share ``1 - size/working set`` of the traffic that misses a cache level moves at the
  next level's bandwidth (smooth across cache sizes); plus a cost per row for operators that
  handle rows one by one (the taps of a gather, the active rows of a sparse epilogue), and
  for k×k gathers the operators that zero the taps falling in the padding.
- an output of 32 MiB or more is written to fresh pages under glibc's default allocator
  (which serves such allocations with ``mmap``, so every call page-faults): ``output bytes /
  page bandwidth``, for GEMMs, convolutions, gathers and element-wise operators, whose
  result size the operator gives. Calibration runs with
  :func:`laudnet.measure.timing.stable_allocator`, which avoids this (the fitted page
  bandwidth is then high).
- overhead: ``count ×`` the kind's fixed cost (operator dispatch; several small operators for
  ``index``, ``masker`` and ``epilogue``).

**GPU** (uncalibrated, from datasheets). The schedule assumed for a CPU plan's operators is
that of a fused sparse engine such as LAUDNet's kernels, and for static networks that of an
inference engine that folds batch norms:

- ``gemm`` / ``conv``: implicit GEMM in output tiles ``T_m × T_n`` spread over the SMs in
  waves (several small tiles share an SM); the cheapest tile shape and split-K factor is
  taken, as a GEMM library's heuristic would. Depthwise convolutions are bandwidth bound.
  Grouped (not depthwise) convolutions with narrow groups run below that rate: their time is
  multiplied by ``(W / g)^p`` for a group width ``g`` below ``W`` (``grouped_full_width``,
  ``grouped_exponent``; W = 128, p = 0.53 fitted on the RegNetX rows of pycls' published
  V100 inference times and checked on its RegNetY and ResNeXt rows, see the profiles).
- ``gather``: folded into the next GEMM's operand loads: no kernel of its own; its reads
  (half its bytes) go through L2, and that GEMM reads its gathered operand from L2 instead
  of DRAM (only the unique input rows, ``1/k²`` of the gathered ones, come from DRAM).
- ``slice``: folded into the sliced GEMM's weight loads (free).
- ``elementwise`` marked *fused* (the activation after a convolution, a batch norm after a
  convolution): done in the producing kernel's epilogue (free).
- ``index``: one small kernel per operator, whatever its count; ``masker``: a pooling and a
  small GEMM kernel; ``epilogue``, unfused element-wise ops, pooling: one kernel each.
- an operator repeated ``count`` times (e.g. per-sample runs of channel skipping) is one
  batched kernel whose tiles are ``count`` times as many. A ``count`` below 1 is an
  expectation (the branch of a layer-skipping block at batch 1 runs with probability r):
  the kernel's whole cost, launch included, times ``count``.
- launches are asynchronous: a kernel costs ``max(work, launches × launch_us)``, so small
  batches are launch bound. Host-side Python overhead is hidden behind the GPU queue and
  not modelled, nor are the device-to-host synchronisations of data-dependent shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..sparse.plan import Op
from .hardware import Hardware

MEMORY_KINDS = ("gather", "elementwise", "epilogue", "slice", "masker")


@dataclass(frozen=True)
class Cost:
    """Milliseconds of one or more operators. ``memory_ms`` is the memory time *not* hidden
    under compute and ``overhead_ms`` the dispatch / launch time not hidden under work, so
    ``total_ms = compute_ms + memory_ms + overhead_ms``."""

    compute_ms: float = 0.0
    memory_ms: float = 0.0
    overhead_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.compute_ms + self.memory_ms + self.overhead_ms

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.compute_ms + other.compute_ms, self.memory_ms + other.memory_ms,
                    self.overhead_ms + other.overhead_ms)

    def __mul__(self, factor: float) -> "Cost":
        return Cost(self.compute_ms * factor, self.memory_ms * factor, self.overhead_ms * factor)


def total_cost(costs) -> Cost:
    out = Cost()
    for c in costs:
        out = out + c
    return out


def _work(compute_s: float, memory_s: float, overlap: float) -> tuple[float, float]:
    """``(compute, exposed memory)`` seconds of compute and memory combined with ``overlap``."""
    work = max(compute_s, memory_s) + (1.0 - overlap) * min(compute_s, memory_s)
    return compute_s, work - compute_s


def gemm_dims(op: Op) -> tuple[float, float, float, float]:
    """``(m, k, n, groups)`` of a ``gemm`` or of the implicit GEMM of a ``conv``, per group."""
    if op.kind == "gemm":
        rows, k, n, groups = op.shape
        return float(rows), float(k), float(n), float(groups)
    batch, c_in, c_out, kernel, stride, groups, out_h, out_w = op.shape
    return float(batch * out_h * out_w), float(kernel * kernel * c_in // groups), float(c_out // groups), float(groups)


def is_depthwise(op: Op) -> bool:
    if op.kind != "conv":
        return False
    _, c_in, c_out, _, _, groups, _, _ = op.shape
    return groups > 1 and groups == c_in == c_out


# --------------------------------------------------------------------------------- CPU
FRESH_PAGES_BYTES = 32 * 2 ** 20
"""Allocations from this size on are ``mmap``-ed by glibc (its largest dynamic threshold)."""


def memory_seconds(hw: Hardware, nbytes: float, working_set: float | None = None) -> float:
    """Seconds to move ``nbytes`` with a working set of ``working_set`` bytes (default
    ``nbytes``) through the cache levels and main memory of a CPU profile."""
    working_set = max(working_set or nbytes, 1.0)
    levels = sorted(hw.caches, key=lambda c: c.size_kb)
    dram = hw.memory_bandwidth_gbs * hw.model.get("memory_efficiency", 1.0)
    bandwidths = [c.bandwidth_gbs for c in levels] + [dram]
    per_byte = 1.0 / bandwidths[0]
    for cache, bandwidth, beyond in zip(levels, bandwidths, bandwidths[1:]):
        miss = max(0.0, 1.0 - cache.size_kb * 1024 / working_set)
        per_byte += miss * (1.0 / beyond - 1.0 / bandwidth)
    return nbytes * per_byte * 1e-9


def output_bytes(op: Op) -> float:
    """Bytes of the tensor an operator allocates for its result (one repetition)."""
    if op.kind == "gemm":
        rows, _, n, groups = op.shape
        return groups * rows * n * 4
    if op.kind == "conv":
        batch, _, c_out, _, _, _, out_h, out_w = op.shape
        return batch * out_h * out_w * c_out * 4
    if op.kind in ("gather", "elementwise"):  # one unary result
        return op.bytes / 2
    if op.kind == "epilogue" and len(op.shape) == 3:
        pixels, channels, _ = op.shape
        return pixels * channels * 4
    return 0.0  # small (slice, masker) or of a size the operator does not tell


def _memory_terms(op: Op) -> tuple[float, float, float]:
    """``(rows handled one by one, working set, bytes written to fresh pages)`` of a memory
    operator. Gathers index one row per tap; a sparse epilogue selects and scatters its
    active rows and touches the identity, the branch rows and the output map."""
    rows, working_set, fresh = 0.0, op.bytes, 0.0
    if op.kind == "gather" and len(op.shape) == 3:
        rows = op.shape[0] * op.shape[1]
    if op.kind == "epilogue" and len(op.shape) == 3:
        pixels, channels, active = op.shape
        sparse = active < pixels
        rows = active if sparse else 0.0
        working_set = (2 * pixels + active) * channels * 4
    if output_bytes(op) >= FRESH_PAGES_BYTES:
        fresh = output_bytes(op)
    return rows, working_set, fresh


def weight_bytes(op: Op) -> float:
    if op.kind == "gemm":
        _, k, n, groups = op.shape
        return groups * k * n * 4
    batch, c_in, c_out, kernel, _, groups, _, _ = op.shape
    return c_out * c_in // groups * kernel * kernel * 4


def matmul_efficiency(params: dict, m: float, k: float, n: float, streamed: float = 0.0,
                      aligned: bool = True) -> float:
    """Fraction of peak a CPU GEMM of ``m × k × n`` reaches, ``streamed`` the share of its
    row operand that does not fit the L2 cache, ``aligned`` whether ``n`` is a multiple of
    the vector width (see the module docstring)."""
    return (params["efficiency"] * m / (m + params["m_half"]) * k / (k + params["k_half"])
            * n / (n + params["n_half"]) * (1.0 - params.get("stream_loss", 0.0) * streamed)
            * (1.0 if aligned else params.get("unaligned", 1.0)))


def _l2_miss(hw: Hardware, nbytes: float) -> float:
    levels = [c for c in hw.caches if c.level.upper() == "L2"]
    return max(0.0, 1.0 - levels[0].size_kb * 1024 / nbytes) if levels and nbytes > 0 else 0.0


def _cpu_cost(op: Op, hw: Hardware) -> Cost:
    model = hw.model
    extra = 0.0
    if op.kind in ("gemm", "conv"):
        params = model[op.kind]
        if is_depthwise(op):
            efficiency = params["depthwise_efficiency"]
        else:
            m, k, n, groups = gemm_dims(op)
            streamed = _l2_miss(hw, op.bytes - weight_bytes(op) - output_bytes(op))
            vector = max(1, hw.fp32_lanes // 2)
            efficiency = matmul_efficiency(params, m, k, n, streamed, n % vector == 0)
            if op.kind == "conv" and op.shape[1] < vector:  # a stem: few input channels
                efficiency *= params.get("narrow_input", 1.0)
        compute = op.macs / (hw.peak_gmacs * 1e9 * efficiency) if op.macs > 0 else 0.0
        memory = memory_seconds(hw, op.bytes)
        overhead = params["overhead_us"] * 1e-6
        pointwise = op.kind == "conv" and op.shape[3] == 1 and op.shape[4] == 1
        extra = 0.0 if pointwise else weight_bytes(op) / (params.get("packing_gbs", math.inf) * 1e9)
        fresh = output_bytes(op) if output_bytes(op) >= FRESH_PAGES_BYTES else 0.0
    elif op.kind == "index":
        compute = memory = fresh = 0.0
        overhead = model["index_us"] * 1e-6
    else:
        params = model["memory"][op.kind]
        rows, working_set, fresh = _memory_terms(op)
        compute = 0.0
        memory = memory_seconds(hw, op.bytes, working_set) / params["efficiency"] + rows * params.get("row_ns", 0.0) * 1e-9
        overhead = params["overhead_us"] * 1e-6
        if op.kind == "gather" and len(op.shape) == 3 and op.shape[1] > 1:  # taps in the zero padding
            overhead += params.get("padding_us", 0.0) * 1e-6
    extra += fresh / (model.get("page_gbs", math.inf) * 1e9)
    compute, exposed = _work(compute, memory, model.get("overlap", 1.0))
    return Cost(compute, exposed + extra, overhead) * (op.count * 1e3)


# --------------------------------------------------------------------------------- GPU
SPLIT_K = (1, 2, 4, 8, 16)


def gpu_gemm_seconds(hw: Hardware, m: float, k: float, n: float, groups: float, count: float = 1.0) -> float:
    """Compute time of a tiled GEMM (``groups × count`` independent problems of ``m × k × n``)
    on the SMs: the best tile shape and split-K factor with wave quantisation."""
    model = hw.model
    lane_rate = hw.fp32_lanes * hw.clock_ghz * 1e9 * model["compute_efficiency"]
    problems = max(1.0, groups * count)
    if m <= 0 or n <= 0 or k <= 0:
        return 0.0
    best = math.inf
    for tile_m, tile_n, relative in model["tiles"]:
        per_sm = max(1, min(model.get("max_tiles_per_sm", 8), (128 * 128) // (tile_m * tile_n)))
        tiles = math.ceil(m / tile_m) * math.ceil(n / tile_n) * problems
        for split in SPLIT_K:
            waves = math.ceil(tiles * split / (hw.engines * per_sm))
            seconds = waves * per_sm * tile_m * tile_n * math.ceil(k / split) / (lane_rate * relative)
            if split > 1:  # partial sums written and reduced
                seconds += 2 * split * m * n * problems * 4 / (hw.memory_bandwidth_gbs * 1e9)
            best = min(best, seconds)
    return best


def grouped_slowdown(model: dict, group_width: float) -> float:
    """How much slower than the tile model a grouped convolution of ``group_width`` channels
    per group runs (1 at or above the profile's ``grouped_full_width``)."""
    full = model.get("grouped_full_width", 0.0)
    if group_width <= 0 or group_width >= full:
        return 1.0
    return (full / group_width) ** model["grouped_exponent"]


def _l2_bandwidth(hw: Hardware) -> float:
    levels = [c for c in hw.caches if c.level.upper() == "L2"]
    return (levels[0].bandwidth_gbs if levels else hw.memory_bandwidth_gbs) * 1e9


def _gpu_cost(op: Op, hw: Hardware, fused: bool, gathered: bool = False) -> Cost:
    model = hw.model
    dram = hw.memory_bandwidth_gbs * 1e9 * model["memory_efficiency"]
    launches = 1
    compute = memory = 0.0
    if op.kind in ("gemm", "conv"):
        if is_depthwise(op):
            compute = op.macs * op.count / (hw.peak_gmacs * 1e9 * model["depthwise_efficiency"])
        else:
            m, k, n, groups = gemm_dims(op)
            compute = gpu_gemm_seconds(hw, m, k, n, groups, count=op.count)
            if groups > 1:
                compute *= grouped_slowdown(model, n)
        traffic = op.bytes
        if gathered and op.kind == "gemm":  # operand rows read through the folded gather
            rows, k, _, groups = op.shape
            traffic -= groups * rows * k * 4
        memory = traffic * op.count / dram
    elif op.kind == "gather":  # folded into the GEMM's loads
        launches, memory = 0, op.bytes / 2 * op.count / _l2_bandwidth(hw)
    elif op.kind == "slice" or (op.kind == "elementwise" and fused):
        return Cost()
    elif op.kind == "index":
        launches = 1
    elif op.kind == "masker":
        launches, memory = 2, op.bytes * op.count / dram
        compute = op.macs * op.count / (hw.peak_gmacs * 1e9 * model["depthwise_efficiency"])
    else:  # epilogue, unfused element-wise and pooling
        memory = op.bytes * op.count / dram
    compute, exposed = _work(compute, memory, model["overlap"])
    launch = launches * hw.launch_us * 1e-6
    overhead = max(0.0, launch - (compute + exposed))
    return Cost(compute, exposed, overhead) * 1e3


def op_cost(op: Op, hw: Hardware, fused: bool = False, gathered: bool = False) -> Cost:
    """Predicted cost of ``op`` (all its ``count`` repetitions) on ``hw``. ``fused`` marks an
    element-wise operator that consumes the output of the operator before it (an activation
    or a batch norm after a convolution), ``gathered`` a GEMM right after a gather: on GPUs
    the schedule fuses both."""
    if hw.kind == "cpu":
        return _cpu_cost(op, hw)
    if op.count < 1:  # runs with probability ``count``
        return _gpu_cost(replace(op, count=1.0), hw, fused, gathered) * op.count
    return _gpu_cost(op, hw, fused, gathered)


def plan_cost(ops: list[Op], hw: Hardware, fused: list[bool] | None = None) -> Cost:
    """Summed cost of a sequence of operators (a block's plan or a static part). Unless
    ``fused`` says otherwise, element-wise operators count as fused (in a plan they are the
    activations after the units)."""
    if fused is None:
        fused = [op.kind == "elementwise" for op in ops]
    previous = [None] + [op.kind for op in ops[:-1]]
    return total_cost(op_cost(op, hw, f, before == "gather") for op, f, before in zip(ops, fused, previous))


def block_overhead_ms(hw: Hardware, kind: str) -> float:
    """Fixed host-side cost of one dynamic block's forward of ``kind`` (its paradigm, or
    ``"static"`` without gates) on a CPU: the Python code of the sparse path around its
    operators (GPUs: hidden behind the kernel queue)."""
    if hw.kind != "cpu":
        return 0.0
    key = ("none" if kind in ("static", "none") else "spatial" if "spatial" in kind
           else "channel" if "channel" in kind else "layer")
    return hw.model.get("block_us", {}).get(key, 0.0) * 1e-3
