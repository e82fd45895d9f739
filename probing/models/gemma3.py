"""Adapter for Gemma 3 (``google/gemma-3-4b-it`` and its siblings with a vision tower).

Gemma3Processor expands each ``<start_of_image>`` of the chat template into
``\\n\\n<start_of_image>`` + ``mm_tokens_per_image`` ``<image_soft_token>`` +
``<end_of_image>\\n\\n`` before the forward pass, so the processor's masks line
up with the decoder's hidden states and the defaults of :class:`ModelAdapter`
apply, with two differences:

* the processor reads a flat list of images as the images of *one* prompt,
  so each image is passed in its own list;
* a raw prompt starts with ``<start_of_image>``, as the template writes it;
* only the soft tokens carry image features (``config.image_token_id``); the
  frame tokens count as text.

Image soft tokens attend to each other bidirectionally (``token_type_ids``),
all other tokens causally; an image lies wholly inside any shared prefix, so
prefix sharing stays exact.
"""

from __future__ import annotations

from PIL import Image

from probing.models.base import ModelAdapter


class Gemma3Adapter(ModelAdapter):
    """Gemma 3: decoder at ``model.model.language_model``, one image list per prompt."""

    family = "gemma3"
    model_types = ("gemma3",)

    @property
    def raw_image_text(self) -> str:
        """``<start_of_image>``, the placeholder the processor expands (as in the template)."""
        return getattr(self.processor, "boi_token", None) or self.processor.image_token

    def processor_images(self, images: list[Image.Image]) -> list[list[Image.Image]]:
        """One single-image list per prompt, as Gemma3Processor expects."""
        return [[image] for image in images]
