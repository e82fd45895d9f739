"""Adapter for Idefics3 and SmolVLM (``HuggingFaceTB/SmolVLM-256M-Instruct``, ...).

Idefics3Processor splits an image into square tiles plus a global view and
writes, per tile, a frame token, a tile tag (``<row_1_col_2>`` or
``<global-img>``) and ``image_seq_len`` ``<image>`` placeholders, so the
processor's ``input_ids`` and attention mask already line up with the
decoder's hidden states. Only ``<image>`` positions carry image features; the
frame and tag tokens count as text. Images of different shapes give different
numbers of tiles; a batch pads the missing tiles with all-zero images, which
the model drops before the vision tower.

The text decoder is ``model.model.text_model`` (not ``language_model``).
SmolVLM (``smolvlm``, SmolVLM2) shares this layout and processor contract.
"""

from __future__ import annotations

import torch

from probing.models.base import ModelAdapter


class Idefics3Adapter(ModelAdapter):
    """Idefics3 / SmolVLM: Llama decoder at ``model.model.text_model``, tiled images."""

    family = "idefics3"
    model_types = ("idefics3", "smolvlm")

    def language_model(self, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """The text decoder, ``model.model.text_model``."""
        model = self.model if model is None else model
        return model.model.text_model
