"""Frozen VLMs for stage 1: loading, family adapters, tiny test checkpoints.

``load_model(config)`` returns ``(model, processor, adapter)``; the adapter
(``base.ModelAdapter``) is everything the extraction engine needs to know
about a family. ``tiny.build_tiny_checkpoint`` writes small random checkpoints
of the real architectures for tests and the demo (``name = "tiny:<family>"``).
"""

from probing.models.base import ModelAdapter, last_token_positions
from probing.models.loading import (
    ModelLoadError,
    default_model_config,
    load_model,
    model_manifest_entry,
    resolve_model_path,
)
from probing.models.registry import (
    UnknownFamilyError,
    adapter_class_for_family,
    adapter_class_for_model_type,
    known_families,
)
from probing.models.tiny import build_tiny_checkpoint, tiny_families

__all__ = [
    "ModelAdapter",
    "ModelLoadError",
    "UnknownFamilyError",
    "adapter_class_for_family",
    "adapter_class_for_model_type",
    "build_tiny_checkpoint",
    "default_model_config",
    "known_families",
    "last_token_positions",
    "load_model",
    "model_manifest_entry",
    "resolve_model_path",
    "tiny_families",
]
