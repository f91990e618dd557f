"""The sparse engine: a block's branch run where its decision says, one module per
paradigm (:mod:`.spatial`, :mod:`.channel`, :mod:`.layer`, each with its executor ``run``,
its expected operators ``plan`` and its MAC count ``macs``), on the kernels of
:mod:`laudnet.sparse`, chosen by measurement. It knows nothing about gates."""

from . import channel, layer, spatial
from .branch import Branch, Unit, excite, se_macs
from .mode import engine_input, inference

__all__ = ["Branch", "Unit", "channel", "engine_input", "excite", "inference", "layer", "se_macs", "spatial"]
