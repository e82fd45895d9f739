"""The extraction engine on every tiny checkpoint: exact pooling, batch invariance,
prefix sharing, first tokens, and the workdir an in-process run writes.

Reference values come from `model(**batch, output_hidden_states=True)` and a
per-row Python loop over the real tokens, independent of
`probing.extraction.pooling`. Tolerances (float32 models, float32 features):
the hooked pass and output_hidden_states run the very same kernels, so they
must agree to 1e-5; a row alone versus inside a padded batch differs only by
kernel reduction order (attention over padded lengths, batched matmuls), up
to a few 1e-5 on these activations: atol = rtol = 1e-4. bf16 models would need
about 2e-2 (8 mantissa bits), which is why the tests run in float32.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from probing.extraction.forward import PooledForward
from probing.extraction.runner import extract
from probing.extraction.settings import ExtractionError
from probing.models import default_model_config, load_model
from probing.models.tiny import tiny_families
from probing.provenance import process_command
from probing.store.workdir import Workdir

POOLINGS = ("mean", "max", "last", "first", "index:1", "index:-2", "image_mean", "text_mean")
EXACT = {"atol": 1e-5, "rtol": 1e-5}
BATCH_INVARIANT_FLOAT32 = {"atol": 1e-4, "rtol": 1e-4}
PROMPTS = (
    'This image describes "A small red dog on the green grass near a big old tree." Is it right?',
    "Cat?",
    'This image describes "Two cars." Is it right? Answer:',
)


# Tiny checkpoints and the synthetic dataset go to the session's private cache
# (tests/conftest.py); one torch thread keeps tiny forwards fast.
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module", params=tiny_families())
def loaded(request):
    config = default_model_config()
    config.name = f"tiny:{request.param}"
    config.device = "cpu"
    model, _, adapter = load_model(config)
    yield model, adapter
    adapter.set_padding_side(adapter.padding_side)


def _images() -> list[Image.Image]:
    # Different sizes and aspect ratios: Qwen-VL gives them different token counts.
    return [
        Image.new("RGB", (128, 96), "red"),
        Image.new("RGB", (70, 150), "green"),
        Image.new("RGB", (100, 100), "blue"),
    ]


def _manual_pooling(hidden_states, attention_mask, image_mask) -> dict[str, torch.Tensor]:
    """{pooling: [B, L+1, D]} by looping over rows and their real positions."""
    out: dict[str, list] = {name: [] for name in POOLINGS}
    for b in range(attention_mask.shape[0]):
        real = attention_mask[b].bool()
        positions = real.nonzero().flatten()
        image = real & image_mask[b]
        text = real & ~image_mask[b]
        per_layer: dict[str, list] = {name: [] for name in POOLINGS}
        for states in hidden_states:
            row = states[b].float()
            per_layer["mean"].append(row[real].mean(0))
            per_layer["max"].append(row[real].max(0).values)
            per_layer["last"].append(row[positions[-1]])
            per_layer["first"].append(row[positions[0]])
            per_layer["index:1"].append(row[positions[1]])
            per_layer["index:-2"].append(row[positions[-2]])
            per_layer["image_mean"].append(row[image].mean(0))
            per_layer["text_mean"].append(row[text].mean(0))
        for name in POOLINGS:
            out[name].append(torch.stack(per_layer[name]))
    return {name: torch.stack(values) for name, values in out.items()}


@pytest.mark.parametrize("side", ["left", "right"])
def test_hooked_pooling_equals_output_hidden_states(loaded, side) -> None:
    model, adapter = loaded
    adapter.set_padding_side(side)
    batch = adapter.to_model(adapter.build_batch(_images(), PROMPTS))
    with torch.no_grad():
        reference = model(**batch, output_hidden_states=True)
    attention_mask = adapter.attention_mask(batch)
    image_mask = adapter.image_token_mask(batch)
    # The prompts differ in length, so this batch really is padded on `side`.
    padded = attention_mask[:, 0] == 0 if side == "left" else attention_mask[:, -1] == 0
    assert padded.any()
    expected = _manual_pooling(reference.hidden_states, attention_mask, image_mask)
    layers = adapter.decoder_layers(model)
    hooks_before = [len(layer._forward_hooks) for layer in layers]
    with PooledForward(model, adapter, POOLINGS, with_image=True) as runner:
        pooled = runner.run(batch).pooled
    for name in POOLINGS:
        torch.testing.assert_close(pooled[name], expected[name], **EXACT, msg=name)
    # Our hooks are gone after the context (transformers keeps its own).
    assert [len(layer._forward_hooks) for layer in layers] == hooks_before


@pytest.mark.parametrize("side", ["left", "right"])
def test_features_do_not_depend_on_the_rest_of_the_batch(loaded, side) -> None:
    model, adapter = loaded
    adapter.set_padding_side(side)
    images = _images()
    with PooledForward(model, adapter, POOLINGS, with_image=True) as runner:
        together = runner.run(adapter.to_model(adapter.build_batch(images, PROMPTS))).pooled
        for row in range(len(PROMPTS)):
            alone = runner.run(
                adapter.to_model(adapter.build_batch([images[row]], [PROMPTS[row]]))
            ).pooled
            for name in POOLINGS:
                torch.testing.assert_close(
                    together[name][row : row + 1],
                    alone[name],
                    **BATCH_INVARIANT_FLOAT32,
                    msg=f"{adapter.family} {side} row {row} {name}",
                )


def test_prefix_sharing_equals_unshared(loaded) -> None:
    model, adapter = loaded
    if adapter.prefix_sharing_unsupported:
        # Such families are refused by check_prefix_sharing_supported instead.
        pytest.skip(f"{adapter.family}: {adapter.prefix_sharing_unsupported}")
    red, green = _images()[:2]
    # Two images with three continuations each (as Tao et al.'s captions),
    # rows of one image consecutive, continuations of different lengths.
    captions = ("A red dog.", "Two green cars on the road near a tree.", "A cat?")
    prompts = [f'This image describes "{c}" Is it right? Answer:' for c in captions] * 2
    images = [red] * 3 + [green] * 3
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    passed = []  # the keyword arguments of every forward call
    spy = model.register_forward_pre_hook(
        lambda module, args, kwargs: passed.append(set(kwargs)), with_kwargs=True
    )
    try:
        with PooledForward(model, adapter, POOLINGS, True, first_token_topk=4) as runner:
            inputs = adapter.to_model(adapter.build_batch(images, prompts))
            plain = runner.run(inputs)
            prefix_inputs = adapter.to_model(adapter.build_batch([red, green], prompts[::3]))
            shared = runner.run_shared(inputs, prefix_inputs, groups)
    finally:
        spy.remove()
    # The prefix cache goes in under the installed transformers' own name, not the
    # deprecated past_key_values (removal announced for transformers 5.40).
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else None
    assert any((cache_name or "past_key_values") in keys for keys in passed)
    if cache_name:
        assert not any("past_key_values" in keys for keys in passed)
    for name in POOLINGS:
        torch.testing.assert_close(
            shared.pooled[name], plain.pooled[name], **BATCH_INVARIANT_FLOAT32, msg=name
        )
    torch.testing.assert_close(shared.topk_probs, plain.topk_probs, **BATCH_INVARIANT_FLOAT32)
    assert shared.tokens == plain.tokens
    # The image and the common prompt words ran once per image, not per row.
    assert shared.computed_tokens < 0.6 * plain.computed_tokens


@pytest.mark.parametrize("side", ["left", "right"])
def test_first_token_topk_matches_full_logits(loaded, side) -> None:
    model, adapter = loaded
    adapter.set_padding_side(side)
    batch = adapter.to_model(adapter.build_batch(_images(), PROMPTS))
    with torch.no_grad():
        logits = model(**batch).logits
    last = adapter.attention_mask(batch).cumsum(1).argmax(1)  # last real position
    probs = torch.softmax(logits[torch.arange(len(PROMPTS)), last].float(), dim=-1)
    expected = probs.topk(5, dim=-1)
    with PooledForward(model, adapter, ("mean",), True, first_token_topk=5) as runner:
        result = runner.run(batch)
    assert set(result.pooled) == {"mean"}  # "last" is captured for the head, not written
    assert torch.equal(result.topk_ids, expected.indices)
    torch.testing.assert_close(result.topk_probs, expected.values, **EXACT)


# ---------------------------------------------------------------------------
# A whole in-process run of the demo config, small.


def small_config(family: str = "qwen2_vl"):
    """The demo config on the random tiny checkpoint, cut to 40 rows."""
    from configs.demo import get_config

    # The loading and extraction path, not what the model knows: the 3-layer
    # random checkpoint keeps these tests fast.
    config = get_config(f"{family},tiny")
    config.data.synthetic.num_images = 20
    config.task.split_sizes.val = 4
    config.task.split_sizes.test = 4
    config.task.similarity_stats = False
    config.extract.batch_size = 4
    config.extract.bucket_window = 2
    config.extract.poolings = ("mean", "last", "image_mean")
    config.extract.first_token_topk = 3
    return config


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference"))
    manifest = extract(small_config(), workdir)
    return workdir, manifest


def _zarr_metadata(workdir: str, name: str) -> dict:
    with open(os.path.join(workdir, name, "zarr.json")) as f:
        return json.load(f)


def test_workdir_follows_the_contract(reference_run) -> None:
    workdir, manifest = reference_run
    wd = Workdir(workdir)
    on_disk = wd.manifest()
    assert on_disk == manifest
    n, layers, width = on_disk["num_examples"], on_disk["num_layers"], on_disk["hidden_size"]
    assert (n, layers, width) == (40, 4, 64)
    assert on_disk["complete"] is True
    assert on_disk["poolings"] == ["mean", "last", "image_mean"]
    assert on_disk["label_kind"] == "binary" and on_disk["label_names"] == ["entailed"]
    for field in (
        "format_version",
        "model",
        "library_versions",
        "dtype",
        "feature_dtype",
        "task",
        "prompt_template",
        "layer_convention",
    ):
        assert field in on_disk, field
    # Where and when it ran, outside the fingerprint.
    # (this process's command line: pytest's, or an xdist worker's)
    assert on_disk["command"] == process_command()
    assert on_disk["date"].endswith("+00:00")
    assert "cpu" in on_disk["hardware"] and on_disk["hardware"]["gpu_count"] >= 0
    assert not {"command", "date", "hardware"} & set(on_disk["fingerprint"])

    expected_arrays = {
        "arrays/labels": ("int8", [n]),
        "arrays/split": ("int8", [n]),
        "arrays/group": ("int64", [n]),
        "arrays/written": ("uint8", [n]),
    }
    for name, (dtype, shape) in expected_arrays.items():
        meta = _zarr_metadata(workdir, name)
        assert (meta["data_type"], meta["shape"]) == (dtype, shape), name
    for pooling in on_disk["poolings"]:
        meta = _zarr_metadata(workdir, f"features/{pooling}")
        assert meta["data_type"] == "float32"
        assert meta["shape"] == [n, layers, width]
        chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
        assert chunk == [4, layers, width]  # [batch, L+1, D]
        (codec,) = meta["codecs"]  # each chunk a shard of one inner chunk per layer
        assert codec["name"] == "sharding_indexed"
        assert codec["configuration"]["chunk_shape"] == [4, 1, width]
        values = wd.read_array(f"features/{pooling}")
        assert np.isfinite(values).all() and np.abs(values).sum(axis=(1, 2)).min() > 0
    assert wd.read_array("arrays/written").all()
    split = wd.read_array("arrays/split")
    group = wd.read_array("arrays/group")
    for image in np.unique(group):
        assert len(np.unique(split[group == image])) == 1  # grouped by image

    examples = wd.read_jsonl("examples.jsonl")
    assert [e["row"] for e in examples] == list(range(n))
    for example in examples:
        assert {"image_id", "prompt", "split", "caption", "label"} <= set(example)
        topk = example["first_token_topk"]
        assert len(topk) == 3 and all(isinstance(t, str) and 0 <= p <= 1 for t, p in topk)
        assert [p for _, p in topk] == sorted((p for _, p in topk), reverse=True)


def test_a_different_run_is_refused_and_overwrite_replaces_it(reference_run, tmp_path) -> None:
    workdir = str(tmp_path / "copy")
    shutil.copytree(reference_run[0], workdir)
    config = small_config()
    config.extract.poolings = ("mean",)
    config.task.prompt = "tao_caption"
    with pytest.raises(ExtractionError, match=r"different run.*extract\.poolings.*overwrite"):
        extract(config, workdir)
    # Refused means untouched.
    assert Workdir(workdir).manifest()["poolings"] == ["mean", "last", "image_mean"]

    config.overwrite = True
    manifest = extract(config, workdir)
    assert manifest["complete"] and manifest["poolings"] == ["mean"]
    assert "tao" in json.dumps(Workdir(workdir).read_json("config.json")["task"]["prompt"])
    # Arrays of the replaced run are gone, not left stale beside the new ones (the
    # folder's zarr group metadata is rewritten with them).
    assert sorted(os.listdir(os.path.join(workdir, "features"))) == ["mean", "zarr.json"]


def test_prompt_longer_than_the_context_fails_before_work(tmp_path) -> None:
    config = small_config()
    config.task.prompt = "Is it right? " * 700 + "{caption}"  # > 2048 tokens
    with pytest.raises(ExtractionError, match="longer than the model's context of 2048"):
        extract(config, str(tmp_path / "long"))
    assert not os.path.exists(tmp_path / "long" / "manifest.json")


def _rejection_source(tmp_path, skip: bool):
    from probing.extraction.batches import BatchSource

    config = default_model_config()
    config.device = "cpu"
    _, _, adapter = load_model(config)  # tiny:qwen2_vl
    paths = {1: tmp_path / "ok.png", 2: tmp_path / "sliver.png", 3: tmp_path / "broken.png"}
    Image.new("RGB", (64, 48), "red").save(paths[1])
    # Qwen2-VL's processor refuses aspect ratios above 200.
    Image.new("RGB", (1000, 2), "red").save(paths[2])
    paths[3].write_bytes(b"not an image")
    examples = [
        {"row": r, "image_id": i, "prompt": f"Row {r}?"} for r, i in enumerate((1, 2, 3, 1))
    ]
    image_paths = {i: str(p) for i, p in paths.items()}
    batches = [(0, np.arange(4))]
    return BatchSource(batches, examples, image_paths, adapter, True, False, skip)


def test_rejected_rows_are_skipped_and_recorded_when_allowed(tmp_path) -> None:
    batch = _rejection_source(tmp_path, skip=True)[0]
    window, rows, inputs, rejected = batch.window, batch.rows, batch.inputs, batch.rejected
    assert batch.prompt_spans.shape == (2, 2)
    assert window == 0 and rows.tolist() == [0, 3]
    assert inputs["input_ids"].shape[0] == 2
    reasons = {entry["row"]: entry["reason"] for entry in rejected}
    assert sorted(reasons) == [1, 2]
    assert "aspect ratio" in reasons[1] and reasons[2] == "unreadable"


def test_rejected_rows_stop_the_run_by_default(tmp_path) -> None:
    source = _rejection_source(tmp_path, skip=False)
    with pytest.raises(ExtractionError, match=r"row 2: image 3: cannot decode .*skip_rejected"):
        source[0]
    source.image_paths[3] = source.image_paths[1]
    with pytest.raises(ExtractionError, match=r"row 1 \(image 2.*aspect ratio.*skip_rejected"):
        source[0]
