"""last_prompt pooling and per-row token counts through the hooked forward.

The reference is `output_hidden_states` read at the position of the prompt's
last token, found here by searching the row's token ids for the prompt's own
tokens (independent of `prompt_spans`): under the chat format it differs from
"last" (the generation prompt follows the prompt), under raw it is "last".
Prefix sharing must give the same values.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from probing.extraction.forward import PooledForward
from probing.models import default_model_config, load_model

PROMPTS = ('This image describes "A red dog." Is it right? Answer:', "Objects: dog, cat,")
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module", params=["chat", "raw"])
def loaded(request):
    config = default_model_config()
    config.name = "tiny:qwen2_vl"
    config.device = "cpu"
    config.prompt_format = request.param
    model, _, adapter = load_model(config)
    return model, adapter


def _images():
    return [Image.new("RGB", (128, 96), "red"), Image.new("RGB", (160, 96), "blue")]


def _last_prompt_position(adapter, ids: list[int], prompt: str) -> int:
    """End of the last occurrence of the prompt's tokens in the row."""
    wanted = adapter.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for start in range(len(ids) - len(wanted), -1, -1):
        if ids[start : start + len(wanted)] == wanted:
            return start + len(wanted) - 1
    raise AssertionError(f"prompt tokens of {prompt!r} not in the row")


def test_last_prompt_reads_the_prompts_last_token(loaded):
    model, adapter = loaded
    batch = adapter.to_model(adapter.build_batch(_images(), PROMPTS))
    spans = torch.as_tensor(adapter.prompt_spans(PROMPTS, True))
    with PooledForward(model, adapter, ("last", "last_prompt"), True) as engine:
        result = engine.run(batch, spans)
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    for row, prompt in enumerate(PROMPTS):
        position = _last_prompt_position(adapter, batch["input_ids"][row].tolist(), prompt)
        expected = torch.stack([h[row, position] for h in hidden])
        torch.testing.assert_close(result.pooled["last_prompt"][row], expected, **TOLERANCE)
    same = torch.allclose(result.pooled["last"], result.pooled["last_prompt"])
    assert same == (adapter.prompt_format == "raw")
    counts = result.token_counts
    assert counts.sum(dim=1).tolist() == batch["attention_mask"].sum(dim=1).tolist()
    assert counts[:, 0].tolist() == adapter.image_token_mask(batch).sum(dim=1).tolist()
    assert counts[:, 2].tolist() == spans[:, 1].tolist()


def test_last_prompt_with_prefix_sharing(loaded):
    model, adapter = loaded
    red, blue = _images()
    prompts = [f'This image describes "{c}" Is it right? Answer:' for c in ("A dog.", "Two cars.")]
    prompts = prompts * 2
    images = [red, red, blue, blue]
    spans = torch.as_tensor(adapter.prompt_spans(prompts, True))
    with PooledForward(model, adapter, ("last_prompt", "mean"), True) as engine:
        inputs = adapter.to_model(adapter.build_batch(images, prompts))
        plain = engine.run(inputs, spans)
        leaders = adapter.to_model(adapter.build_batch([red, blue], prompts[::2]))
        shared = engine.run_shared(inputs, leaders, torch.tensor([0, 0, 1, 1]), spans)
    for name in ("last_prompt", "mean"):
        torch.testing.assert_close(shared.pooled[name], plain.pooled[name], **TOLERANCE)
    assert torch.equal(shared.token_counts, plain.token_counts)
    assert shared.computed_tokens < plain.computed_tokens
