"""laudnet: latency-aware dynamic neural networks that really run faster.

Build a dynamic network (``create_model`` or ``convert`` a torchvision model), train it in
``masked`` execution with the Gumbel gates and a compute budget, then run it in ``sparse``
execution, which skips the work the gates turned off.
"""

from . import detection
from .config import PARADIGMS, StageConfig
from .conversion import convert
from .dynamic import NetworkStats, clear_decisions, gate_parameters, set_decisions, set_execution, stats
from .flops import static_macs
from .gates import set_temperature, temperature_schedule
from .latency import predict_latency
from .models import create_model, list_models
from .models.weights import backbone_state_dict, load_backbone
from .search import SearchResult, search
from .train.losses import distillation_loss, flops_budget_loss, latency_budget_loss, rate_bounds

__version__ = "0.1.0"

__all__ = [
    "PARADIGMS", "NetworkStats", "SearchResult", "StageConfig", "backbone_state_dict", "clear_decisions", "convert",
    "create_model", "detection", "distillation_loss", "flops_budget_loss", "gate_parameters", "latency_budget_loss",
    "list_models", "load_backbone", "predict_latency", "rate_bounds", "search", "set_decisions", "set_execution",
    "set_temperature", "static_macs", "stats", "temperature_schedule",
]
