from harness.models.resnet import (
    ACTIVATIONS,
    SHORTCUTS,
    VALID_DEPTHS,
    ResNet,
    build_model,
    canonical_shortcut,
    model_name,
    resolve_family,
    resolve_shortcut,
)

__all__ = [
    "ACTIVATIONS",
    "SHORTCUTS",
    "VALID_DEPTHS",
    "ResNet",
    "build_model",
    "canonical_shortcut",
    "model_name",
    "resolve_family",
    "resolve_shortcut",
]
