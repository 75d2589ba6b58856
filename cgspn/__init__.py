"""C-GSPN: Compact Generalized Spatial Propagation Network for Hugging Face transformers.

Importing this package registers the configurations and models with transformers' Auto classes
and marks them for `trust_remote_code` export, so `save_pretrained` writes the modeling code.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    AutoModelForZeroShotImageClassification,
)

from .configuration_cgspn import CGSPNConfig, CGSPNVisionConfig
from .modeling_cgspn import (
    CGSPNBackbone,
    CGSPNForImageClassification,
    CGSPNForSemanticSegmentation,
    CGSPNModel,
    CGSPNPreTrainedModel,
    CGSPNVisionModel,
)
from .propagation import BackendUnavailableError, available_backends, propagate, use_backend
from .propagation_reference import propagate_ref

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    AutoConfig.register(CGSPNVisionConfig.model_type, CGSPNVisionConfig, exist_ok=True)
    AutoConfig.register(CGSPNConfig.model_type, CGSPNConfig, exist_ok=True)
    registrations = [
        (AutoModel, CGSPNVisionConfig, CGSPNVisionModel),
        (AutoModel, CGSPNConfig, CGSPNModel),
        (AutoModelForImageClassification, CGSPNVisionConfig, CGSPNForImageClassification),
        (AutoModelForSemanticSegmentation, CGSPNVisionConfig, CGSPNForSemanticSegmentation),
        (AutoBackbone, CGSPNVisionConfig, CGSPNBackbone),
        (AutoModelForZeroShotImageClassification, CGSPNConfig, CGSPNModel),
    ]
    for auto_class, config_class, model_class in registrations:
        auto_class.register(config_class, model_class, exist_ok=True)
    CGSPNVisionConfig.register_for_auto_class()
    CGSPNConfig.register_for_auto_class()
    for auto_name, model_class in (
        ("AutoModel", CGSPNVisionModel),
        ("AutoModel", CGSPNModel),
        ("AutoModelForImageClassification", CGSPNForImageClassification),
        ("AutoModelForSemanticSegmentation", CGSPNForSemanticSegmentation),
        ("AutoBackbone", CGSPNBackbone),
    ):
        model_class.register_for_auto_class(auto_name)


_register_auto_classes()

__all__ = [
    "BackendUnavailableError",
    "CGSPNBackbone",
    "CGSPNConfig",
    "CGSPNForImageClassification",
    "CGSPNForSemanticSegmentation",
    "CGSPNModel",
    "CGSPNPreTrainedModel",
    "CGSPNVisionConfig",
    "CGSPNVisionModel",
    "__version__",
    "available_backends",
    "propagate",
    "propagate_ref",
    "use_backend",
]
