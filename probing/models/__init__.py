"""Frozen VLMs for stage 1: loading, family adapters, tiny test checkpoints.

``load_model(config)`` returns ``(model, processor, adapter)``; the adapter
(``base.ModelAdapter``) is everything the extraction engine needs to know
about a family. ``probing.models.tiny.build_tiny_checkpoint`` writes small
random checkpoints of the real architectures for tests and the demo
(``name = "tiny:<family>"``); that package is imported only when such a name
is loaded (``loading.CHECKPOINT_SOURCE_MODULES``), or by its users directly.
"""

from probing.models.base import ModelAdapter, last_token_positions
from probing.models.loading import (
    ModelLoadError,
    default_model_config,
    load_model,
    register_checkpoint_source,
    resolve_model_path,
)
from probing.models.registry import (
    UnknownFamilyError,
    adapter_class_for_family,
    adapter_class_for_model_type,
    known_families,
)

__all__ = [
    "ModelAdapter",
    "ModelLoadError",
    "UnknownFamilyError",
    "adapter_class_for_family",
    "adapter_class_for_model_type",
    "default_model_config",
    "known_families",
    "last_token_positions",
    "load_model",
    "register_checkpoint_source",
    "resolve_model_path",
]
