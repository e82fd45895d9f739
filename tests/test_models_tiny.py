"""Tests of probing.models.tiny: tiny checkpoints load like the real ones."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from probing.models import tiny
from probing.models.registry import adapter_class_for_model_type

_QWEN2_TOKENS = {
    "word": ["Ġdog"],  # byte-level BPE: " dog" is one token with its space
    "pad": "<|endoftext|>",
    "eos": "<|im_end|>",
    "specials": ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
    "generation_prompt": "<|im_start|>assistant\n",
}
_GEMMA_TOKENS = {
    "word": ["▁dog"],  # SentencePiece-style: the space becomes "▁"
    "pad": "<pad>",
    "eos": "<eos>",
    "specials": ("<bos>", "<eos>", "<pad>"),
}

# family -> what its checkpoint must load as. "placeholder" is what the chat
# template writes for an image, "image_token" the token config.image_token_id
# names (the processor expands the placeholder into those); a
# "generation_prompt" of None means the family has no chat template.
EXPECTED = {
    "qwen2_vl": {
        "classes": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2VLImageProcessor"),
        "placeholder": "<|image_pad|>",
        **_QWEN2_TOKENS,
    },
    "fast_vlm": {
        "classes": ("FastVlmForConditionalGeneration", "LlavaProcessor", "CLIPImageProcessor"),
        "placeholder": "<image>",
        **_QWEN2_TOKENS,
    },
    "qwen2_5_vl": {
        "classes": (
            "Qwen2_5_VLForConditionalGeneration",
            "Qwen2_5_VLProcessor",
            "Qwen2VLImageProcessor",
        ),
        "placeholder": "<|image_pad|>",
        **_QWEN2_TOKENS,
    },
    "llava": {
        "classes": ("LlavaForConditionalGeneration", "LlavaProcessor", "CLIPImageProcessor"),
        "placeholder": "<image>",
        **_QWEN2_TOKENS,
    },
    "idefics3": {
        "classes": (
            "Idefics3ForConditionalGeneration",
            "Idefics3Processor",
            "Idefics3ImageProcessor",
        ),
        "placeholder": "<image>",
        **_QWEN2_TOKENS,
        "eos": "<end_of_utterance>",
        "specials": ("<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>"),
        "generation_prompt": "<end_of_utterance>\nAssistant:",
    },
    "paligemma": {
        "classes": (
            "PaliGemmaForConditionalGeneration",
            "PaliGemmaProcessor",
            "SiglipImageProcessor",
        ),
        "tokenizer": "GemmaTokenizer",
        "placeholder": "<image>",
        **_GEMMA_TOKENS,
        "generation_prompt": None,
    },
    "gemma3": {
        "classes": ("Gemma3ForConditionalGeneration", "Gemma3Processor", "Gemma3ImageProcessor"),
        "tokenizer": "GemmaTokenizer",
        "placeholder": "<start_of_image>",
        "image_token": "<image_soft_token>",
        **_GEMMA_TOKENS,
        "specials": ("<bos>", "<start_of_turn>", "<end_of_turn>", "<end_of_image>"),
        "generation_prompt": "<end_of_turn>\n<start_of_turn>model\n",
    },
}


def test_every_tiny_family_is_checked_here() -> None:
    assert sorted(EXPECTED) == sorted(tiny.tiny_families())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory, single_thread) -> str:
    # An explicit cache_dir, as build_tiny_checkpoint's callers may pass.
    return str(tmp_path_factory.mktemp("tiny_cache"))


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_checkpoint_loads_through_auto_classes(family: str, cache_dir: str) -> None:
    path = tiny.build_tiny_checkpoint(family, cache_dir)
    expected = EXPECTED[family]
    model_class, processor_class, image_processor_class = expected["classes"]

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)

    assert type(model).__name__ == model_class
    assert type(processor).__name__ == processor_class
    assert type(processor.image_processor).__name__ == image_processor_class
    if "tokenizer" in expected:
        assert type(processor.tokenizer).__name__ == expected["tokenizer"]
    # The family's tokenizer pipeline (llava's auto mapping loads the Qwen2
    # BPE as the generic backend, so the pipeline is what is checked).
    assert processor.tokenizer.tokenize(" dog") == expected["word"]
    # Small enough for fast tests: a few decoder layers, narrow hidden states.
    text_config = model.config.get_text_config()
    assert 2 <= text_config.num_hidden_layers <= 4
    assert 32 <= text_config.hidden_size <= 64
    assert sum(p.numel() for p in model.parameters()) < 2_000_000

    # Special tokens are single tokens.
    tokenizer = processor.tokenizer
    image_token = expected.get("image_token", expected["placeholder"])
    for token in {expected["placeholder"], image_token, *expected["specials"]}:
        assert tokenizer.tokenize(token) == [token]
    assert tokenizer.pad_token == expected["pad"]
    assert tokenizer.eos_token == expected["eos"]
    # The config's image token is the tokenizer's.
    assert tokenizer.convert_tokens_to_ids(image_token) == model.config.image_token_id

    # The chat template places the image and ends with the generation prompt.
    if expected["generation_prompt"] is None:
        assert not processor.chat_template
        return
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "A red dog."}]}
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert text.index(expected["placeholder"]) < text.index("A red dog.")
    assert text.endswith(expected["generation_prompt"])


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_images_give_a_few_tokens_and_forward_runs(family: str, cache_dir: str) -> None:
    path = tiny.build_tiny_checkpoint(family, cache_dir)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    adapter = adapter_class_for_model_type(model.config.model_type)(model, processor)
    # The family's real processor, called the way the adapter calls it.
    batch = adapter.build_batch(
        [Image.new("RGB", (128, 96), "red"), Image.new("RGB", (128, 96), "blue")],
        ["Is it a cat?", "Is it a cat?"],
    )
    image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1)
    # Idefics3 tiles a 128×96 image into 2 × 2 tiles plus a global view: 20.
    assert torch.all((image_tokens >= 4) & (image_tokens <= 20)), image_tokens
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
    known = r"fast_vlm, gemma3, idefics3, llava, paligemma, qwen2_5_vl, qwen2_vl"
    with pytest.raises(ValueError, match=rf"'gpt2'.*{known}"):
        tiny.build_tiny_checkpoint("gpt2", cache_dir)
