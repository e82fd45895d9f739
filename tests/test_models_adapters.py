"""Tests of the model adapters and load_model on the tiny checkpoints."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from probing.models import (
    ModelLoadError,
    UnknownFamilyError,
    adapter_class_for_family,
    adapter_class_for_model_type,
    default_model_config,
    known_families,
    last_token_positions,
    load_model,
)
from probing.models.tiny import tiny_families

FAMILIES = tiny_families()
PROMPTS = [
    'This image describes "A small red dog running on the green grass near a big old tree." '
    "Is it right? Answer:",
    "Cat?",
]


pytestmark = pytest.mark.usefixtures("single_thread")


def _config(family: str, **overrides):
    config = default_model_config()
    config.name = f"tiny:{family}"
    config.device = "cpu"
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request):
    return load_model(_config(request.param))


def _images() -> list[Image.Image]:
    # Different sizes and aspect ratios (and a non-RGB mode).
    return [Image.new("RGB", (128, 96), "red"), Image.new("L", (70, 150), 128)]


def _forward(model, adapter, batch):
    with torch.no_grad():
        return model(**adapter.to_model(batch), output_hidden_states=True)


def test_load_model_freezes_and_describes_the_model(loaded) -> None:
    model, processor, adapter = loaded
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert adapter.processor is processor
    text_config = model.config.get_text_config()
    assert adapter.hidden_size == text_config.hidden_size
    assert adapter.num_decoder_layers == text_config.num_hidden_layers
    assert model.config.model_type in adapter.model_types
    assert adapter_class_for_model_type(model.config.model_type) is type(adapter)
    assert adapter.padding_side in ("left", "right")


def test_masks_align_with_hidden_states(loaded) -> None:
    model, _, adapter = loaded
    batch = adapter.build_batch(_images(), PROMPTS)
    output = _forward(model, adapter, batch)

    assert len(output.hidden_states) == adapter.num_decoder_layers + 1
    hidden_shape = output.hidden_states[0].shape
    assert hidden_shape[2] == adapter.hidden_size
    attention_mask = adapter.attention_mask(batch)
    image_mask = adapter.image_token_mask(batch)
    assert attention_mask.shape == hidden_shape[:2]
    assert image_mask.shape == hidden_shape[:2]
    assert image_mask.dtype == torch.bool
    # Image tokens are real tokens; prompts of different length mean padding.
    assert torch.all(attention_mask[image_mask] == 1)
    lengths = attention_mask.sum(dim=1)
    assert lengths[0] > lengths[1]
    assert lengths[0] == hidden_shape[1]


def test_image_token_counts_equal_image_features(loaded) -> None:
    model, _, adapter = loaded
    batch = adapter.build_batch(_images(), PROMPTS)
    counts = adapter.image_token_mask(batch).sum(dim=1)
    inputs = adapter.to_model(batch)
    # Pixels plus what locates them (Qwen's grid, Idefics3's pixel mask).
    vision_keys = ("pixel_values", "image_grid_thw", "pixel_attention_mask")
    vision_inputs = {k: v for k, v in inputs.items() if k in vision_keys}
    with torch.no_grad():
        # One [n_i, D] tensor per image, or a [B, n, D] tensor.
        features = model.model.get_image_features(**vision_inputs).pooler_output
    per_image = [f.shape[0] for f in features]
    assert counts.tolist() == per_image
    assert all(count > 0 for count in per_image)
    if adapter.family.startswith("qwen") or adapter.family == "idefics3":
        # Qwen2-VL keeps aspect ratios and Idefics3 tiles the image:
        # different image sizes, different counts.
        assert per_image[0] != per_image[1]


def test_decoder_layer_hooks_reproduce_hidden_states(loaded) -> None:
    model, _, adapter = loaded
    batch = adapter.build_batch(_images(), PROMPTS)
    captured: list[torch.Tensor] = []

    def keep_output(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    def keep_input(module, args, kwargs):
        captured.insert(0, args[0] if args else kwargs["hidden_states"])

    layers = adapter.decoder_layers()
    handles = [layer.register_forward_hook(keep_output) for layer in layers]
    handles.append(layers[0].register_forward_pre_hook(keep_input, with_kwargs=True))
    try:
        output = _forward(model, adapter, batch)
    finally:
        for handle in handles:
            handle.remove()
    assert len(captured) == len(layers) + 1 == adapter.num_decoder_layers + 1
    # hidden_states[0] is block 0's input, block i's output is hidden_states[i + 1] ...
    for index, activation in enumerate(captured[:-1]):
        assert torch.equal(activation, output.hidden_states[index])
    # ... except the last, which transformers reports after the final norm.
    assert not torch.allclose(captured[-1], output.hidden_states[-1])
    normed = adapter.final_norm()(captured[-1])
    torch.testing.assert_close(normed, output.hidden_states[-1])


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_does_not_change_real_tokens(loaded, side: str) -> None:
    model, _, adapter = loaded
    original_side = adapter.padding_side
    adapter.set_padding_side(side)
    try:
        images = _images()
        batch = adapter.build_batch(images, PROMPTS)
        output = _forward(model, adapter, batch)
        mask = adapter.attention_mask(batch).bool()
        last = last_token_positions(adapter.attention_mask(batch))
        padded_row = int(torch.argmin(mask.sum(dim=1)))
        assert mask[padded_row, 0 if side == "left" else -1].item() is False
        for row in range(len(PROMPTS)):
            alone = adapter.build_batch([images[row]], [PROMPTS[row]])
            alone_output = _forward(model, adapter, alone)
            assert alone["input_ids"].shape[1] == int(mask[row].sum())
            assert batch["input_ids"][row, last[row]] == alone["input_ids"][0, -1]
            for layer in (0, len(output.hidden_states) - 1):
                batched = output.hidden_states[layer][row][mask[row]]
                torch.testing.assert_close(
                    batched, alone_output.hidden_states[layer][0], atol=1e-4, rtol=1e-4
                )
    finally:
        adapter.set_padding_side(original_side)


def test_text_only_prompts(loaded) -> None:
    model, _, adapter = loaded
    batch = adapter.build_batch(None, PROMPTS)
    output = _forward(model, adapter, batch)
    assert adapter.attention_mask(batch).shape == output.hidden_states[0].shape[:2]
    assert not adapter.image_token_mask(batch).any()


def test_build_batch_rejects_mismatched_images(loaded) -> None:
    _, _, adapter = loaded
    with pytest.raises(ValueError, match="1 images for 2 prompts"):
        adapter.build_batch(_images()[:1], PROMPTS)
    with pytest.raises(ValueError, match="padding side"):
        adapter.set_padding_side("middle")


def test_last_token_positions_under_both_paddings() -> None:
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]])
    assert last_token_positions(mask).tolist() == [3, 2, -1]


def test_random_init_is_fresh_and_seeded() -> None:
    trained, _, _ = load_model(_config("qwen2_vl"))
    fresh, _, adapter = load_model(_config("qwen2_vl", random_init=True))
    again, _, _ = load_model(_config("qwen2_vl", random_init=True))
    other, _, _ = load_model(_config("qwen2_vl", random_init=True, random_init_seed=1))
    assert adapter.family == "qwen2_vl"
    assert not fresh.training and not any(p.requires_grad for p in fresh.parameters())
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    weights = {
        name: m.state_dict()[key]
        for name, m in [("trained", trained), ("fresh", fresh), ("again", again), ("other", other)]
    }
    assert torch.equal(weights["fresh"], weights["again"])
    assert not torch.equal(weights["fresh"], weights["trained"])
    assert not torch.equal(weights["fresh"], weights["other"])


def test_padding_side_and_dtype_from_config() -> None:
    _, processor, adapter = load_model(_config("fast_vlm", padding_side="left", dtype="bfloat16"))
    assert adapter.padding_side == processor.tokenizer.padding_side == "left"
    assert next(adapter.model.parameters()).dtype == torch.bfloat16
    batch = adapter.to_model(adapter.build_batch(_images(), PROMPTS))
    assert batch["pixel_values"].dtype == torch.bfloat16
    assert batch["input_ids"].dtype == torch.int64


def test_unknown_model_type_lists_known_families(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    # A checkpoint that is whole but of an unknown family (without a tokenizer
    # file it would be refused for that first, see test_workdir_faults).
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(UnknownFamilyError) as error:
        load_model(_config("qwen2_vl", name=str(tmp_path)))
    message = str(error.value)
    assert "'bert'" in message and str(tmp_path) in message
    for family in known_families():
        assert family in message
    assert "probing/models/registry.py" in message
    with pytest.raises(UnknownFamilyError, match="qwen2_vl"):
        adapter_class_for_family("kosmos_99")


def test_bad_names_fail_before_loading(tmp_path) -> None:
    missing = str(tmp_path / "no_such_checkpoint")
    with pytest.raises(ModelLoadError, match="no_such_checkpoint"):
        load_model(_config("qwen2_vl", name=missing))
    with pytest.raises(ModelLoadError, match=r"tiny:fast_vlm, tiny:gemma3, .*tiny:qwen2_vl"):
        load_model(_config("qwen2_vl", name="tiny:nope"))
    with pytest.raises(ModelLoadError, match=r"model\.dtype"):
        load_model(_config("qwen2_vl", dtype="float64"))
    with pytest.raises(ModelLoadError, match=r"model\.padding_side"):
        load_model(_config("qwen2_vl", padding_side="center"))


@pytest.mark.skipif(
    os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 to fail fast"
)
def test_unreachable_hub_id_names_it() -> None:
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-vlm"):
        load_model(_config("qwen2_vl", name="no-such-org/no-such-vlm"))
