"""Dynamic blocks, one file per backbone family."""

from .base import EXECUTION_MODES, BlockRecord, Decision, DynamicBlock, FixedDecisions, Unit
from .mobilenet import DynamicInvertedResidual
from .regnet import DynamicResBottleneckBlock
from .resnet import DynamicBasicBlock, DynamicBottleneck

__all__ = ["EXECUTION_MODES", "BlockRecord", "Decision", "DynamicBasicBlock", "DynamicBlock",
           "DynamicBottleneck", "DynamicInvertedResidual", "DynamicResBottleneckBlock", "FixedDecisions", "Unit"]
