"""The optional C++ kernels (``csrc/pixels.cpp``), compiled on first use.

They do the per-call index bookkeeping of spatial sparse execution (rows and taps of every
unit) and the residual epilogue in one call each, instead of dozens of small PyTorch
operators. They run on CPU tensors only; CUDA tensors, a machine without a C++ compiler,
or ``LAUDNET_NO_EXTENSION=1`` use the PyTorch kernels, which define the semantics (the
tests check that both give the same results).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

_module: ModuleType | None = None
_tried = False
_enabled = os.environ.get("LAUDNET_NO_EXTENSION", "") in ("", "0")


def set_enabled(enabled: bool) -> None:
    """Use (``True``) or bypass (``False``) the C++ kernels, e.g. to compare both paths."""
    global _enabled
    _enabled = bool(enabled)


def extension() -> ModuleType | None:
    """The compiled kernels, building them on first use; ``None`` when disabled or unavailable."""
    global _module, _tried
    if not _enabled:
        return None
    if not _tried:
        _tried = True
        try:
            from torch.utils.cpp_extension import _get_build_directory, load

            source = Path(__file__).with_name("csrc") / "pixels.cpp"
            if not (Path(_get_build_directory("laudnet_pixels", False)) / "laudnet_pixels.so").exists():
                print("laudnet: building the C++ sparse kernels (first use only, about a minute)...",
                      file=sys.stderr, flush=True)
            _module = load(name="laudnet_pixels", sources=[str(source)], extra_cflags=["-O3"], verbose=False)
        except Exception as error:  # no compiler, no headers, no ninja: the PyTorch kernels work too
            warnings.warn(f"laudnet: C++ sparse kernels unavailable ({type(error).__name__}: {error}); "
                          "using the PyTorch kernels", RuntimeWarning, stacklevel=2)
            _module = None
    return _module
