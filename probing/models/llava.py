"""Adapter for LLaVA-1.5 style checkpoints (``llava-hf/llava-1.5-7b-hf``, ...).

LlavaProcessor expands ``<image>`` into one token per vision feature (patches,
minus CLS under the "default" feature strategy) before the forward pass, so the
defaults of :class:`ModelAdapter` apply unchanged.
"""

from __future__ import annotations

from probing.models.base import ModelAdapter


class LlavaAdapter(ModelAdapter):
    """LLaVA: decoder at ``model.model.language_model``, processor-side expansion."""

    family = "llava"
    model_types = ("llava",)
