"""Adapter for PaliGemma and PaliGemma 2 (``google/paligemma2-3b-pt-224``, ...).

PaliGemma has no chat template, so ``model.prompt_format`` changes nothing and
the manifest records ``raw``: PaliGemmaProcessor turns ``"<image>" + prompt``
into ``<image>`` × n (expanded in the processor, so masks line up with the
hidden states), ``<bos>``, the prompt and a newline. The processor also
returns ``token_type_ids`` (0 = prefix) and training ``labels``; the labels are
dropped here, since passing them would make the model compute a loss over the
logits of every position.

The decoder attends **bidirectionally** over the whole prefix, image and
prompt alike (token type 0). Two consequences:

* prefix sharing is refused: a shared prompt prefix run alone would not see
  the continuation that, in the real model, every prefix token attends to;
* text-only prompts (the no-image baseline) are tokenised here, because the
  processor refuses calls without images; they get the same ``<bos>`` prompt
  newline layout and token type 0, i.e. the same bidirectional prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from probing.models.base import ModelAdapter


class PaliGemmaAdapter(ModelAdapter):
    """PaliGemma: Gemma decoder at ``model.model.language_model``, bidirectional prefix."""

    family = "paligemma"
    model_types = ("paligemma",)
    prefix_sharing_unsupported = (
        "PaliGemma attends bidirectionally over the whole prompt, so a shared prefix run "
        "without its continuation gives different features"
    )

    @property
    def image_token(self) -> str:
        """The placeholder string the processor expands (``<image>``)."""
        return self.processor.image_token

    @property
    def prompt_format(self) -> str:
        """Always ``"raw"``: PaliGemma has no chat template, its own format is raw."""
        return "raw"

    def _span_texts(self, prompts: Sequence[str], with_image: bool) -> tuple[list[str], bool]:
        """The text-only prefix, which ends like the processor's (``<bos>`` prompt newline)."""
        return self.render_prompts(prompts, with_image=False), False

    def render_prompts(self, prompts: Sequence[str], with_image: bool) -> list[str]:
        """PaliGemma's prompt strings: ``<image>`` first with an image, else the full prefix.

        With an image the processor itself adds ``<bos>`` after the image and
        the closing newline; text-only strings are complete already.
        """
        if with_image:
            return [f"{self.image_token}{prompt}" for prompt in prompts]
        return [f"{self.tokenizer.bos_token}{prompt}\n" for prompt in prompts]

    def build_batch(
        self, images: Sequence[Image.Image] | None, prompts: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Model inputs as :meth:`ModelAdapter.build_batch`, without training labels."""
        if images is not None:
            batch = super().build_batch(images, prompts)
        else:
            prompts = list(prompts)
            if not prompts:
                raise ValueError("build_batch needs at least one prompt")
            batch = dict(
                self.tokenizer(
                    self.render_prompts(prompts, with_image=False),
                    add_special_tokens=False,
                    padding=True,
                    return_tensors="pt",
                    return_token_type_ids=False,
                )
            )
            # Token type 0 everywhere: the prompt is one bidirectional prefix,
            # as the processor marks it when an image is present.
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        batch.pop("labels", None)
        return batch
