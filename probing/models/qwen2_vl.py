"""Adapter for Qwen2-VL (``Qwen/Qwen2-VL-2B-Instruct`` and its siblings).

transformers' Qwen2VLProcessor expands each ``<|image_pad|>`` into one token per
merged 2×2 patch group before the forward pass, so the processor's attention
mask and ``input_ids`` already line up with the decoder's hidden states; the
defaults of :class:`ModelAdapter` apply, except that a raw prompt frames the
image as the template does (``<|vision_start|><|image_pad|><|vision_end|>``). Images keep (roughly) their
aspect ratio, so examples of one batch carry different numbers of image tokens.
"""

from __future__ import annotations

from probing.models.base import ModelAdapter


class Qwen2VLAdapter(ModelAdapter):
    """Qwen2-VL: decoder at ``model.model.language_model``, processor-side expansion."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)

    @property
    def raw_image_text(self) -> str:
        """The image as the chat template writes it, framed by the vision tokens."""
        return f"<|vision_start|>{self.processor.image_token}<|vision_end|>"
