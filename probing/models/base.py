"""The adapter interface between a VLM family and the extraction engine.

The extraction engine never touches a model's internals directly: it asks the
family's :class:`ModelAdapter` to turn (image, prompt) pairs into model inputs,
which decoder layers to hook, which norm follows the last layer, and which
sequence positions are real tokens or image tokens. Supporting a new family is
one small subclass in its own file plus one line in ``registry.py``.

Conventions every adapter guarantees (tests check them on tiny checkpoints):

* ``attention_mask(batch)`` and ``image_token_mask(batch)`` are ``[B, T]`` with
  ``T`` the sequence length the decoder layers see, i.e. after any image-token
  expansion, so they line up position by position with every hidden state.
* ``decoder_layers(model)`` lists the decoder blocks in order; the output of
  block ``i - 1`` is transformers' ``hidden_states[i]``, the input of block 0
  is ``hidden_states[0]`` (embeddings with image features inserted).
* transformers replaces ``hidden_states[-1]`` by the final-normed output, so a
  hook on the last block must apply ``final_norm(model)`` to reproduce it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

PADDING_SIDES = ("left", "right")

# model.prompt_format values. "chat": the checkpoint's chat template with a
# default system turn where it has one, the image and the prompt in a user
# turn, and the generation prompt (the assistant header), so the last token
# is the template's, not the prompt's. "raw": the image placeholder followed
# directly by the prompt text, no system turn, no template, as base models
# were prompted (Tao et al. 2024); the last token is the prompt's own.
PROMPT_FORMATS = ("chat", "raw")


class ModelAdapter:
    """Family-specific glue around a transformers VLM and its processor.

    Subclasses set :attr:`family` and :attr:`model_types` and override only what
    differs from the defaults below, which fit transformers' native
    LLaVA-style models: the processor expands image tokens itself and the text
    decoder lives at ``model.model.language_model`` with ``.layers`` and
    ``.norm``.
    """

    # Short name used in configs and manifests, e.g. "qwen2_vl".
    family: ClassVar[str] = ""
    # config.json `model_type` values this adapter handles.
    model_types: ClassVar[tuple[str, ...]] = ()
    # Why prefix sharing (running a prompt prefix once, then its continuations
    # against its KV cache) would change this family's features; "" when it is
    # exact. It is exact only if no prefix token attends to a later token.
    prefix_sharing_unsupported: ClassVar[str] = ""

    def __init__(self, model: torch.nn.Module, processor: Any, prompt_format: str = "chat") -> None:
        self.model = model
        self.processor = processor
        self.set_prompt_format(prompt_format)
        # The hub commit loaded, set by load_model (None: local or unknown).
        self.resolved_revision: str | None = None

    # -- tokenizer padding -------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer."""
        return self.processor.tokenizer

    @property
    def padding_side(self) -> str:
        """``"left"`` or ``"right"``: where ``build_batch`` puts padding tokens."""
        return self.tokenizer.padding_side

    def set_padding_side(self, side: str) -> None:
        """Makes ``build_batch`` pad on ``side`` (``"left"`` or ``"right"``)."""
        if side not in PADDING_SIDES:
            raise ValueError(f"padding side must be one of {PADDING_SIDES}, got {side!r}")
        self.tokenizer.padding_side = side

    # -- inputs ------------------------------------------------------------

    @property
    def prompt_format(self) -> str:
        """How prompts are rendered: ``"chat"`` or ``"raw"`` (see `PROMPT_FORMATS`)."""
        return self._prompt_format

    def set_prompt_format(self, prompt_format: str) -> None:
        """Makes ``render_prompts`` use ``prompt_format`` (``model.prompt_format``)."""
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"model.prompt_format must be one of {', '.join(PROMPT_FORMATS)}, "
                f"got {prompt_format!r}"
            )
        self._prompt_format = prompt_format

    def conversation(self, prompt: str, with_image: bool) -> list[dict[str, Any]]:
        """One user turn: the image (if any), then the prompt text."""
        content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": prompt})
        return [{"role": "user", "content": content}]

    @property
    def raw_image_text(self) -> str:
        """What stands for the image in a raw prompt (the processor expands it)."""
        return self.processor.image_token

    def render_prompts(self, prompts: Sequence[str], with_image: bool) -> list[str]:
        """The strings the processor tokenises: chat template or raw (`prompt_format`)."""
        if self.prompt_format == "raw":
            image = self.raw_image_text if with_image else ""
            return [f"{image}{prompt}" for prompt in prompts]
        return [
            self.processor.apply_chat_template(
                self.conversation(prompt, with_image),
                add_generation_prompt=True,
                tokenize=False,
            )
            for prompt in prompts
        ]

    def _span_texts(self, prompts: Sequence[str], with_image: bool) -> tuple[list[str], bool]:
        """Texts whose tokens end like the processor's, and whether the tokenizer adds specials."""
        return self.render_prompts(prompts, with_image), True

    def prompt_spans(self, prompts: Sequence[str], with_image: bool) -> np.ndarray:
        """``[B, 2]`` int64: per row, (tokens after the prompt's last token, prompt tokens).

        Counted from the END of the row's real tokens, which image-token
        expansion (always before the prompt) does not move: the last token of
        the user's prompt text is real token ``-1 - spans[b, 0]`` of row b,
        whatever template surrounds it. Needs a fast tokenizer (offsets).
        """
        rendered, add_special_tokens = self._span_texts(prompts, with_image)
        encoded = self.tokenizer(
            rendered, return_offsets_mapping=True, add_special_tokens=add_special_tokens
        )
        spans = np.zeros((len(prompts), 2), dtype=np.int64)
        for row, (prompt, text) in enumerate(zip(prompts, rendered, strict=True)):
            stripped = prompt.strip()
            start = text.rfind(stripped)
            if not stripped or start < 0:
                raise ValueError(
                    f"prompt {prompt!r} is empty or not found in its rendering {text!r}; "
                    "the template must keep the prompt text"
                )
            end = start + len(stripped)
            offsets = encoded["offset_mapping"][row]
            inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
            spans[row] = (len(offsets) - 1 - inside[-1], len(inside))
        return spans

    def build_batch(
        self, images: Sequence[Image.Image] | None, prompts: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Model inputs (CPU tensors) for one batch.

        Args:
          images: one RGB image per prompt, or ``None`` for text-only prompts.
          prompts: the user text of each example.

        Returns:
          The processor's output (``input_ids``, ``attention_mask``, pixel
          tensors, ...), padded to the longest example on :attr:`padding_side`.
        """
        prompts = list(prompts)
        if not prompts:
            raise ValueError("build_batch needs at least one prompt")
        if images is not None:
            images = [image.convert("RGB") for image in images]
            if len(images) != len(prompts):
                raise ValueError(
                    f"build_batch got {len(images)} images for {len(prompts)} prompts; "
                    "pass one image per prompt, or images=None for text-only prompts"
                )
        texts = self.render_prompts(prompts, with_image=images is not None)
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if images is not None:
            kwargs["images"] = self.processor_images(images)
        return dict(self.processor(**kwargs))

    def processor_images(self, images: list[Image.Image]) -> Any:
        """``images`` (one per prompt) in the layout the processor's ``images=`` expects.

        Most processors take a flat list and hand the images out to the
        prompts' placeholders in order; processors that read a flat list as
        all images of one prompt need ``[[image] for image in images]``.
        """
        return images

    def to_model(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch`` on the model's device; floating tensors in the model's dtype."""
        param = next(self.model.parameters())
        return {
            key: value.to(param.device, param.dtype)
            if value.is_floating_point()
            else value.to(param.device)
            for key, value in batch.items()
        }

    # -- masks aligned with hidden states ----------------------------------

    def attention_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, T]`` 0/1 mask of real tokens, aligned with the decoder's hidden states.

        The default holds when the processor already expanded every image
        placeholder into one token per image feature (all native transformers
        VLMs); families that expand inside ``forward`` must override it.
        """
        return batch["attention_mask"]

    @property
    def image_token_id(self) -> int:
        """Token id of the placeholder replaced by image features."""
        config = self.model.config
        token_id = getattr(config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(config, "image_token_index", None)
        if token_id is None:
            raise AttributeError(
                f"{type(config).__name__} has no image_token_id; override image_token_id "
                f"in {type(self).__name__}"
            )
        return int(token_id)

    def image_token_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, T]`` bool, True where an image feature sits in the hidden states."""
        return batch["input_ids"] == self.image_token_id

    # -- model structure ---------------------------------------------------

    def language_model(self, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """The text decoder (the module holding ``layers`` and ``norm``)."""
        model = self.model if model is None else model
        inner = getattr(model, "model", model)
        language_model = getattr(inner, "language_model", None)
        if language_model is None:
            raise AttributeError(
                f"{type(model).__name__} has no model.language_model; override "
                f"language_model() in {type(self).__name__}"
            )
        return language_model

    def decoder_layers(self, model: torch.nn.Module | None = None) -> list[torch.nn.Module]:
        """The decoder blocks, first to last."""
        return list(self.language_model(model).layers)

    def final_norm(self, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """The norm transformers applies after the last decoder block."""
        return self.language_model(model).norm

    @property
    def hidden_size(self) -> int:
        """Width ``D`` of the decoder's hidden states."""
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def num_decoder_layers(self) -> int:
        """Number ``L`` of decoder blocks (hidden states are ``L + 1``)."""
        return len(self.decoder_layers())


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` index of the last real token of each row, under left or right padding."""
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be [B, T], got shape {tuple(attention_mask.shape)}")
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    # The largest position holding a 1; rows without any real token give -1.
    return torch.where(attention_mask.bool(), positions, -1).amax(dim=1)


def prompt_token_mask(attention_mask: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: the user's prompt tokens, from ``ModelAdapter.prompt_spans``.

    Works for any padding (left, right, or a left-padded prefix followed by a
    right-padded continuation) because it counts real tokens from the end.
    """
    real = attention_mask.bool()
    from_end = real.sum(dim=1, keepdim=True) - real.long().cumsum(dim=1)  # 0 at the last real
    after, length = spans[:, :1].to(from_end.device), spans[:, 1:].to(from_end.device)
    return real & (from_end >= after) & (from_end < after + length)


def token_composition(
    attention_mask: torch.Tensor, image_mask: torch.Tensor | None, spans: torch.Tensor
) -> torch.Tensor:
    """``[B, 3]`` long: image, template and prompt tokens of every row.

    Image tokens are the positions carrying image features; the prompt tokens
    are the user's text; everything else real (system turn, role headers,
    image frame tokens, the generation prompt, BOS) is template.
    """
    real = attention_mask.bool()
    image = (real & image_mask).sum(dim=1) if image_mask is not None else real.sum(dim=1) * 0
    prompt = spans[:, 1].to(real.device)
    return torch.stack([image, real.sum(dim=1) - image - prompt, prompt], dim=1)
