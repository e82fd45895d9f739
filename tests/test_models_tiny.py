"""Tests of probing.models.tiny: tiny checkpoints load like the real ones."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from probing.models import tiny

# family -> (model class, processor class, image processor class, image placeholder)
EXPECTED = {
    "qwen2_vl": (
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLProcessor",
        "Qwen2VLImageProcessor",
        "<|image_pad|>",
    ),
    "fast_vlm": (
        "FastVlmForConditionalGeneration",
        "LlavaProcessor",
        "CLIPImageProcessor",
        "<image>",
    ),
    "qwen2_5_vl": (
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLProcessor",
        "Qwen2VLImageProcessor",
        "<|image_pad|>",
    ),
    "llava": (
        "LlavaForConditionalGeneration",
        "LlavaProcessor",
        "CLIPImageProcessor",
        "<image>",
    ),
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    # Tiny matrices gain nothing from threads, and on a shared machine the
    # thread pool's contention makes forwards ~20× slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield str(tmp_path_factory.mktemp("tiny_cache"))
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_checkpoint_loads_through_auto_classes(family: str, cache_dir: str) -> None:
    path = tiny.build_tiny_checkpoint(family, cache_dir)
    model_class, processor_class, image_processor_class, placeholder = EXPECTED[family]

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)

    assert type(model).__name__ == model_class
    assert type(processor).__name__ == processor_class
    assert type(processor.image_processor).__name__ == image_processor_class
    # The Qwen2 BPE pipeline (llava's auto mapping loads it as the generic backend).
    assert processor.tokenizer.tokenize(" dog") == ["Ġdog"]
    # Small enough for fast tests: a few decoder layers, narrow hidden states.
    text_config = model.config.get_text_config()
    assert 2 <= text_config.num_hidden_layers <= 4
    assert 32 <= text_config.hidden_size <= 64
    assert sum(p.numel() for p in model.parameters()) < 2_000_000

    # Special tokens are single tokens and the chat template places the image.
    tokenizer = processor.tokenizer
    for token in (placeholder, "<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert tokenizer.tokenize(token) == [token]
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token == "<|im_end|>"
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "A red dog."}]}
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert placeholder in text
    assert text.endswith("<|im_start|>assistant\n")
    # The config's image token is the tokenizer's placeholder.
    image_token_id = model.config.image_token_id
    assert tokenizer.convert_tokens_to_ids(placeholder) == image_token_id


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_images_give_a_few_tokens_and_forward_runs(family: str, cache_dir: str) -> None:
    path = tiny.build_tiny_checkpoint(family, cache_dir)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it a cat?"}]}
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    batch = processor(
        text=[text, text],
        images=[Image.new("RGB", (128, 96), "red"), Image.new("RGB", (128, 96), "blue")],
        padding=True,
        return_tensors="pt",
    )
    image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert torch.all((image_tokens >= 4) & (image_tokens <= 16)), image_tokens
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(logits).all()


def test_tokenizer_round_trips_caption_text(cache_dir: str) -> None:
    processor = AutoProcessor.from_pretrained(tiny.build_tiny_checkpoint("qwen2_vl", cache_dir))
    caption = 'This image describes "A small brown horse near 3 boats." Is it right? Answer:'
    ids = processor.tokenizer(caption, add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.decode(ids) == caption
    # Trained on caption-like text: whole words, not bytes.
    assert len(ids) < len(caption) / 2.5


def test_checkpoint_is_cached_and_deterministic(tmp_path) -> None:
    first = tiny.build_tiny_checkpoint("qwen2_vl", str(tmp_path / "a"))
    stamp = os.path.getmtime(os.path.join(first, "model.safetensors"))
    assert tiny.build_tiny_checkpoint("qwen2_vl", str(tmp_path / "a")) == first
    assert os.path.getmtime(os.path.join(first, "model.safetensors")) == stamp
    assert tiny.TINY_VERSION in os.path.basename(first)
    # No staging directories are left next to the published checkpoint.
    assert os.listdir(tmp_path / "a") == [os.path.basename(first)]

    second = tiny.build_tiny_checkpoint("qwen2_vl", str(tmp_path / "b"))
    weights_a = AutoModelForImageTextToText.from_pretrained(first).state_dict()
    weights_b = AutoModelForImageTextToText.from_pretrained(second).state_dict()
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)


def test_building_leaves_the_callers_rng_alone(cache_dir: str, tmp_path) -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    tiny.build_tiny_checkpoint("qwen2_vl", str(tmp_path))
    assert torch.equal(torch.rand(3), expected)


def test_unknown_tiny_family_lists_known_ones(cache_dir: str) -> None:
    with pytest.raises(ValueError, match=r"'gpt2'.*fast_vlm, llava, qwen2_5_vl, qwen2_vl"):
        tiny.build_tiny_checkpoint("gpt2", cache_dir)
