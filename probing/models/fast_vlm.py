"""Adapter for FastVLM through transformers' native ``fast_vlm`` model type.

The native port (FastVlmForConditionalGeneration, LlavaProcessor with a
CLIPImageProcessor) expands ``<image>`` in the processor into
``(side / 64) ** 2`` tokens, so the processor's attention mask already has the
length of the decoder's hidden states. Apple's original remote-code release
(model_type ``llava_qwen2``) instead splices image features in inside
``forward``, which makes the processor's mask shorter than the hidden states
(the 2025 study cites that release; its paper does not say how it masked).
That release is deliberately not handled here: convert it, or write an
adapter that rebuilds the mask.
"""

from __future__ import annotations

from probing.models.base import ModelAdapter


class FastVlmAdapter(ModelAdapter):
    """FastVLM: Qwen2 decoder at ``model.model.language_model``, FastViT-HD vision tower."""

    family = "fast_vlm"
    model_types = ("fast_vlm",)
