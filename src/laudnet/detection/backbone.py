"""The ResNet body of a torchvision detection backbone as a dynamic ResNet.

torchvision's ResNet-FPN backbones (``resnet_fpn_backbone``, ``_resnet_fpn_extractor``)
hold the ResNet without pooling and classifier in an ``IntermediateLayerGetter``, whose
``return_layers`` map stage names to the keys the FPN reads. Detectors built with
pretrained weights use ``FrozenBatchNorm2d`` (fixed statistics and affine terms), those
built from scratch ``nn.BatchNorm2d``. The dynamic body keeps both: the same norm type and
eps, the same state-dict keys and the same ``requires_grad`` flags (torchvision freezes the
early stages), and ``forward`` returns the same ``OrderedDict``. The sparse engine folds
either norm into its convolution.
"""

from __future__ import annotations

import functools

from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from ..models.resnet import DynamicResNet, resnet_layout
from ..models.weights import from_static

RESNET_BODY = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
"""The modules of a ResNet detection body, in order."""

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _check_body(body: nn.Module) -> None:
    names = [name for name, _ in body.named_children()]
    if not isinstance(body, IntermediateLayerGetter) or tuple(names) != RESNET_BODY:
        held = f" over {', '.join(names)}" if isinstance(body, IntermediateLayerGetter) else ""
        raise ValueError(f"cannot convert a backbone body {type(body).__name__}{held}; supported: torchvision's "
                         f"IntermediateLayerGetter over a ResNet's {', '.join(RESNET_BODY)} "
                         "(ResNet-FPN backbones returning layer4)")
    norm_types = {type(m) for m in body.modules() if isinstance(m, nn.modules.batchnorm._NormBase) or
                  isinstance(m, FrozenBatchNorm2d)}
    if len(norm_types) != 1 or not norm_types <= set(NORMS):
        found = ", ".join(sorted(t.__name__ for t in norm_types)) or "none"
        raise ValueError(f"the backbone body's norms are {found}; supported: all BatchNorm2d or all "
                         "FrozenBatchNorm2d")


def convert_body(body: IntermediateLayerGetter, **kwargs) -> DynamicResNet:
    """Dynamic ResNet holding all the weights of a detection backbone's ResNet body, with
    its norms, ``return_layers`` and frozen parameters.

    Keyword arguments are those of :class:`DynamicResNet` (``paradigm``, ``granularity``,
    ``gate_scale``, ``input_size``). With every gate open it computes the same features.
    """
    _check_body(body)
    block, layers = resnet_layout(body)
    norm = type(body.bn1)
    dynamic = DynamicResNet(block, layers, in_channels=body.conv1.in_channels,
                            norm_layer=functools.partial(norm, eps=body.bn1.eps),
                            return_layers=body.return_layers, **kwargs)
    norms = dict(dynamic.named_modules())
    for name, module in body.named_modules():  # per-norm settings a state dict does not carry
        if isinstance(module, NORMS):
            norms[name].eps = module.eps
            if isinstance(module, nn.BatchNorm2d):
                norms[name].momentum = module.momentum
    dynamic = from_static(dynamic, body)
    frozen = {name for name, p in body.named_parameters() if not p.requires_grad}
    for name, parameter in dynamic.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return dynamic
