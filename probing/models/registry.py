"""Which adapter handles which checkpoint, resolved by config.json's ``model_type``.

To support a new family in probing: write ``probing/models/<family>.py`` with a
:class:`~probing.models.base.ModelAdapter` subclass (set ``family`` and
``model_types``, override what differs), and add the class to ``ADAPTERS``.
Without touching probing: write the subclass in your own module and name it
in the config, ``--config.model.adapter=my_package.adapters:MyAdapter``
(`adapter_class_for`); it then handles the checkpoint whatever its model_type.
"""

from __future__ import annotations

from probing.imports import load_object
from probing.models.base import ModelAdapter
from probing.models.fast_vlm import FastVlmAdapter
from probing.models.gemma3 import Gemma3Adapter
from probing.models.idefics3 import Idefics3Adapter
from probing.models.llava import LlavaAdapter
from probing.models.paligemma import PaliGemmaAdapter
from probing.models.qwen2_5_vl import Qwen2_5_VLAdapter
from probing.models.qwen2_vl import Qwen2VLAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (
    Qwen2VLAdapter,
    Qwen2_5_VLAdapter,
    FastVlmAdapter,
    LlavaAdapter,
    Idefics3Adapter,
    PaliGemmaAdapter,
    Gemma3Adapter,
)


class UnknownFamilyError(ValueError):
    """No adapter handles a checkpoint's model_type (or a family name)."""


def known_families() -> dict[str, tuple[str, ...]]:
    """Family name -> the config.json model_type values its adapter handles."""
    return {adapter.family: adapter.model_types for adapter in ADAPTERS}


def _how_to_add() -> str:
    listing = "; ".join(
        f"{family} (model_type {', '.join(types)})" for family, types in known_families().items()
    )
    return (
        f"Known families: {listing}. To add one, write probing/models/<family>.py with a "
        "ModelAdapter subclass (family, model_types, overrides) and add it to ADAPTERS in "
        "probing/models/registry.py, or name your own subclass in the config: "
        "--config.model.adapter=my_package.module:MyAdapter."
    )


def adapter_class_for_model_type(model_type: str, source: str = "") -> type[ModelAdapter]:
    """The adapter class whose ``model_types`` contains ``model_type``.

    Args:
      model_type: ``config.model_type`` of the checkpoint.
      source: what the model_type was read from, named in the error message.
    """
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    where = f" (from {source})" if source else ""
    raise UnknownFamilyError(f"No adapter for model_type {model_type!r}{where}. {_how_to_add()}")


def adapter_class_for_family(family: str) -> type[ModelAdapter]:
    """The adapter class named ``family``."""
    for adapter in ADAPTERS:
        if adapter.family == family:
            return adapter
    raise UnknownFamilyError(f"Unknown model family {family!r}. {_how_to_add()}")


def adapter_class_for(
    model_type: str, import_path: str | None = None, source: str = ""
) -> type[ModelAdapter]:
    """The adapter named by `import_path` ("package.module:Class", config model.adapter) if
    given, else the registered one for `model_type` (adapter_class_for_model_type)."""
    if not import_path:
        return adapter_class_for_model_type(model_type, source)
    adapter = load_object(import_path, "model.adapter")
    if not (isinstance(adapter, type) and issubclass(adapter, ModelAdapter)):
        raise UnknownFamilyError(
            f"model.adapter={import_path!r} is {adapter!r}, not a subclass of "
            "probing.models.base.ModelAdapter"
        )
    return adapter
