"""Dynamic blocks, one file per backbone family."""

from ..engine import Unit
from .base import EXECUTION_MODES, DynamicBlock
from .decisions import Decision, FixedDecisions
from .mobilenet import DynamicInvertedResidual
from .records import BlockRecord
from .regnet import DynamicResBottleneckBlock
from .resnet import DynamicBasicBlock, DynamicBottleneck

__all__ = ["EXECUTION_MODES", "BlockRecord", "Decision", "DynamicBasicBlock", "DynamicBlock",
           "DynamicBottleneck", "DynamicInvertedResidual", "DynamicResBottleneckBlock", "FixedDecisions", "Unit"]
