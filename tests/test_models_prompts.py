"""Prompt formats (chat / raw) and where the user's prompt sits in every row's tokens.

For every tiny family and both formats: the tokens `prompt_token_mask` marks
decode to the prompt text, whatever template, image expansion and padding
surround them; the token composition adds up; and a raw Qwen2-VL prompt is
exactly image, then prompt tokens, built here by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from probing.models import adapter_class_for_family, default_model_config, load_model
from probing.models.base import prompt_token_mask, token_composition
from probing.models.loading import ModelLoadError, resolve_model_path
from probing.models.tiny import tiny_families

PROMPTS = ['This image describes "a red star". Is it right? Answer:', "Objects: dog, cat,"]

_ADAPTERS: dict[tuple[str, str], object] = {}


def _adapter(family: str, prompt_format: str):
    """An adapter over the tiny checkpoint's processor and config (no weights needed)."""
    key = (family, prompt_format)
    if key not in _ADAPTERS:
        path = resolve_model_path(f"tiny:{family}")
        processor = transformers.AutoProcessor.from_pretrained(path)
        model = torch.nn.Module()
        model.config = transformers.AutoConfig.from_pretrained(path)
        _ADAPTERS[key] = adapter_class_for_family(family)(model, processor, prompt_format)
    return _ADAPTERS[key]


def _images(n: int) -> list[Image.Image]:
    # Different sizes: rows get different numbers of image tokens, so padding differs.
    return [Image.new("RGB", (128 + 32 * i, 96), (40 * i, 90, 200)) for i in range(n)]


def _decoded_prompt(adapter, batch, spans, row) -> str:
    mask = prompt_token_mask(adapter.attention_mask(batch), torch.as_tensor(spans))
    ids = batch["input_ids"][row][mask[row]].tolist()
    return adapter.tokenizer.decode(ids).strip()


@pytest.mark.parametrize("prompt_format", ["chat", "raw"])
@pytest.mark.parametrize("family", tiny_families())
@pytest.mark.parametrize("with_image", [True, False])
def test_prompt_tokens_are_found_in_every_family(family, prompt_format, with_image):
    adapter = _adapter(family, prompt_format)
    for side in ("left", "right"):
        adapter.set_padding_side(side)
        images = _images(len(PROMPTS)) if with_image else None
        batch = adapter.build_batch(images, PROMPTS)
        spans = adapter.prompt_spans(PROMPTS, with_image)
        for row, prompt in enumerate(PROMPTS):
            assert _decoded_prompt(adapter, batch, spans, row) == prompt
        image_mask = adapter.image_token_mask(batch) if with_image else None
        counts = token_composition(
            adapter.attention_mask(batch), image_mask, torch.as_tensor(spans)
        )
        assert counts.sum(dim=1).tolist() == adapter.attention_mask(batch).sum(dim=1).tolist()
        assert (counts >= 0).all() and (counts[:, 0] > 0).all() == with_image
        if prompt_format == "raw" and family != "paligemma":
            assert (spans[:, 0] == 0).all()  # the last token is the prompt's own
        if prompt_format == "chat" and family != "paligemma":
            assert (spans[:, 0] > 0).all()  # the generation prompt follows it


def test_raw_qwen2_vl_prompt_is_image_then_prompt():
    adapter = _adapter("qwen2_vl", "raw")
    image = _images(1)
    batch = adapter.build_batch(image, PROMPTS[:1])
    tokenizer = adapter.tokenizer
    image_tokens = int(batch["image_grid_thw"][0].prod()) // 4  # 2x2 patches merged
    expected = (
        tokenizer.convert_tokens_to_ids(["<|vision_start|>"])
        + [adapter.image_token_id] * image_tokens
        + tokenizer.convert_tokens_to_ids(["<|vision_end|>"])
        + tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    )
    assert batch["input_ids"][0].tolist() == expected
    spans = adapter.prompt_spans(PROMPTS[:1], True)
    counts = token_composition(
        batch["attention_mask"], adapter.image_token_mask(batch), torch.as_tensor(spans)
    )
    assert counts.tolist() == [[image_tokens, 2, len(expected) - image_tokens - 2]]
    chat = _adapter("qwen2_vl", "chat").build_batch(image, PROMPTS[:1])["input_ids"][0].tolist()
    assert len(chat) > len(expected) and chat[-len(expected[-3:]) :] != expected[-3:]


def test_paligemma_format_is_its_own():
    chat, raw = _adapter("paligemma", "chat"), _adapter("paligemma", "raw")
    assert chat.prompt_format == raw.prompt_format == "raw"
    assert chat.render_prompts(PROMPTS, True) == raw.render_prompts(PROMPTS, True)
    assert np.array_equal(chat.prompt_spans(PROMPTS, True)[:, 0], [1, 1])  # the newline


def test_bad_prompt_format():
    config = default_model_config()
    config.name = "tiny:qwen2_vl"
    config.prompt_format = "plain"
    with pytest.raises(ModelLoadError, match=r"model\.prompt_format must be one of"):
        load_model(config)
    with pytest.raises(ValueError, match="prompt_format must be one of chat, raw"):
        _adapter("qwen2_vl", "chat").set_prompt_format("plain")
