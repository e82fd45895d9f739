"""Family-specific behaviour of the adapters that the shared adapter tests cannot see.

Every tiny checkpoint must actually look at its image (a random tower can
wash the image out; FastVLM's did). PaliGemma's prompt layout and its
bidirectional prefix, which is why it refuses prefix sharing; Idefics3's
tiling; Gemma 3's per-prompt image lists; SmolVLM sharing the Idefics3 adapter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from probing.extraction.forward import PrefixSharingError, check_prefix_sharing_supported
from probing.models import (
    adapter_class_for_family,
    adapter_class_for_model_type,
    default_model_config,
    load_model,
)
from probing.models.tiny import tiny_families

PROMPT = "Is there a dog in the image?"


pytestmark = pytest.mark.usefixtures("single_thread")


_LOADED: dict[str, tuple] = {}


def _load(family: str):
    """(model, processor, adapter) of a tiny family, loaded once per module."""
    if family not in _LOADED:
        config = default_model_config()
        config.name = f"tiny:{family}"
        config.device = "cpu"
        _LOADED[family] = load_model(config)
    return _LOADED[family]


@pytest.fixture(scope="module", autouse=True)
def _forget_loaded():
    yield
    _LOADED.clear()


def _noise_image(seed: int, size: tuple[int, int] = (128, 96)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _hidden_states(model, adapter, images, prompts) -> tuple:
    batch = adapter.to_model(adapter.build_batch(images, prompts))
    with torch.no_grad():
        return model(**batch, output_hidden_states=True).hidden_states, batch


@pytest.mark.parametrize("family", tiny_families())
def test_image_features_depend_on_the_image(family: str) -> None:
    model, _, adapter = _load(family)
    images = [Image.new("RGB", (128, 96), "red"), _noise_image(0)]
    states, batch = _hidden_states(model, adapter, images, [PROMPT, PROMPT])
    image_mask = adapter.image_token_mask(batch)
    assert image_mask.sum(dim=1).tolist()[0] == image_mask.sum(dim=1).tolist()[1] > 0
    # The embedding output at the image tokens: the features as inserted.
    red, noise = (states[0][row][image_mask[row]] for row in range(2))
    relative = float((red - noise).abs().max() / red.abs().max())
    assert relative > 0.05, f"{family}: the image barely changes its features ({relative:.1e})"


# --------------------------------------------------------------- PaliGemma


def test_paligemma_prompt_layout_with_and_without_image() -> None:
    _, processor, adapter = _load("paligemma")
    tokenizer = processor.tokenizer
    with_image = adapter.build_batch([Image.new("RGB", (64, 48), "red")], [PROMPT])
    text_only = adapter.build_batch(None, [PROMPT])
    # Labels would make the model compute a loss over every position's logits.
    assert "labels" not in with_image and "labels" not in text_only
    prompt_ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    newline = tokenizer.convert_tokens_to_ids("\n")
    text_ids = [tokenizer.bos_token_id, *prompt_ids, newline]
    image_ids = [adapter.image_token_id] * processor.image_seq_length
    assert with_image["input_ids"][0].tolist() == image_ids + text_ids
    assert text_only["input_ids"][0].tolist() == text_ids
    # Token type 0: the whole prompt is the bidirectional prefix, in both.
    for batch in (with_image, text_only):
        assert batch["token_type_ids"].shape == batch["input_ids"].shape
        assert not batch["token_type_ids"].any()


@pytest.mark.parametrize(
    ("family", "bidirectional"), [("paligemma", True), ("gemma3", False), ("idefics3", False)]
)
def test_whether_early_tokens_see_later_ones(family: str, bidirectional: bool) -> None:
    model, _, adapter = _load(family)
    image = Image.new("RGB", (64, 48), "red")
    # Same length, different last word: the first real token sees it only
    # under bidirectional attention.
    prompts = ["Is there a dog in the park?", "Is there a dog in the snow?"]
    original_side = adapter.padding_side
    adapter.set_padding_side("right")  # position 0 is then the first real token
    try:
        states, batch = _hidden_states(model, adapter, [image, image], prompts)
    finally:
        adapter.set_padding_side(original_side)
    assert torch.equal(batch["attention_mask"][0], batch["attention_mask"][1])
    assert not torch.equal(batch["input_ids"][0], batch["input_ids"][1])
    first_token_after_layer_1 = states[1][:, 0]
    changed = not torch.allclose(*first_token_after_layer_1, atol=1e-6, rtol=0)
    assert changed is bidirectional


def test_prefix_sharing_is_declared_unsupported_only_for_paligemma() -> None:
    for family in tiny_families():
        declared = bool(adapter_class_for_family(family).prefix_sharing_unsupported)
        assert declared is (family == "paligemma"), family


def test_prefix_sharing_is_refused_for_paligemma() -> None:
    _, _, adapter = _load("paligemma")
    with pytest.raises(PrefixSharingError, match=r"paligemma.*bidirectional"):
        check_prefix_sharing_supported(adapter)


# ---------------------------------------------------------------- Idefics3


def test_idefics3_tiles_images_into_framed_token_runs() -> None:
    _, processor, adapter = _load("idefics3")
    images = [Image.new("RGB", (128, 96), "red"), Image.new("RGB", (70, 150), "green")]
    batch = adapter.build_batch(images, [PROMPT, PROMPT])
    tokenizer = processor.tokenizer
    per_tile = processor.image_seq_len
    # 128×96: 2 × 2 tiles + the global view; 70×150: 2 × 1 tiles + global.
    assert adapter.image_token_mask(batch).sum(dim=1).tolist() == [5 * per_tile, 3 * per_tile]
    frame = tokenizer.convert_tokens_to_ids("<fake_token_around_image>")
    global_tag = tokenizer.convert_tokens_to_ids("<global-img>")
    for row in range(2):
        ids = batch["input_ids"][row]
        # Frames and tile tags are text tokens, outside the image mask.
        assert (ids == global_tag).sum() == 1
        assert not adapter.image_token_mask(batch)[row][(ids == frame) | (ids == global_tag)].any()
    # The second image's missing tiles are all-zero padding the model drops.
    pixels = batch["pixel_values"]
    assert pixels.shape[:2] == (2, 5)
    assert pixels[1, 3:].abs().sum() == 0 and pixels[1, :3].abs().sum(dim=(1, 2, 3)).min() > 0


def test_smolvlm_models_use_the_idefics3_adapter() -> None:
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    idefics3 = _load("idefics3")[0].config
    config = SmolVLMConfig(
        text_config=idefics3.text_config.to_dict(),
        vision_config={
            k: v
            for k, v in idefics3.vision_config.to_dict().items()
            if k not in ("model_type", "transformers_version")
        },
        scale_factor=idefics3.scale_factor,
        image_token_id=idefics3.image_token_id,
    )
    model = SmolVLMForConditionalGeneration(config)
    adapter_class = adapter_class_for_model_type("smolvlm")
    adapter = adapter_class(model, _load("idefics3")[1])
    assert adapter.family == "idefics3"
    assert adapter.decoder_layers() == list(model.model.text_model.layers)
    assert adapter.final_norm() is model.model.text_model.norm
    assert adapter.num_decoder_layers == config.text_config.num_hidden_layers


# ------------------------------------------------------------------ Gemma 3


def test_gemma3_frames_each_image_and_gives_each_prompt_its_own() -> None:
    _, processor, adapter = _load("gemma3")
    images = [Image.new("RGB", (128, 96), "red"), Image.new("RGB", (70, 150), "green")]
    assert adapter.processor_images(images) == [[images[0]], [images[1]]]
    batch = adapter.build_batch(images, [PROMPT, "Cat?"])
    tokenizer = processor.tokenizer
    image_mask = adapter.image_token_mask(batch)
    assert image_mask.sum(dim=1).tolist() == [processor.image_seq_length] * 2
    for row in range(2):
        ids = batch["input_ids"][row]
        start = int((ids == tokenizer.boi_token_id).nonzero())
        end = int((ids == tokenizer.convert_tokens_to_ids(tokenizer.eoi_token)).nonzero())
        # <start_of_image>, the soft tokens, <end_of_image>; the frame is text.
        assert image_mask[row].nonzero().flatten().tolist() == list(range(start + 1, end))
    # token_type_ids mark the soft tokens (their attention is bidirectional).
    assert torch.equal(batch["token_type_ids"].bool(), image_mask)
