"""Adapter for Qwen2.5-VL (``Qwen/Qwen2.5-VL-3B-Instruct`` and its siblings).

Same layout and processor contract as Qwen2-VL (processor-side expansion of
``<|image_pad|>``, decoder at ``model.model.language_model``); only the vision
tower (window attention, SwiGLU) differs, which the probes never see.
"""

from __future__ import annotations

from probing.models.qwen2_vl import Qwen2VLAdapter


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: decoder at ``model.model.language_model``, processor-side expansion."""

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
