"""What a model says: its yes/no answer to caption questions and the objects it names.

Everything runs through the family adapter and the processor, the path the
extraction takes, on held-out world images (never trained on). The caption
rows are built as the study2025 caption task builds them: per image one of its
captions (label 1) and one caption of another image of the same set (label 0).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from probing.data.synthetic_coco import CATEGORY_NAMES, Scene
from probing.extraction.answers import answer_margins, yes_no_tokens
from probing.models.base import ModelAdapter, last_token_positions
from probing.models.trained import world

_CATEGORY = re.compile(r"\b(" + "|".join(CATEGORY_NAMES) + r")\b")


def caption_rows(scenes: Sequence[Scene], seed: int = 0) -> list[tuple[int, str, int]]:
    """(scene index, caption, label) rows: one positive and one random negative per scene."""
    rng = np.random.default_rng([seed, 17])
    rows = []
    for i, item in enumerate(scenes):
        rows.append((i, item.captions[int(rng.integers(5))], 1))
        other = int(rng.integers(len(scenes) - 1))
        other += other >= i
        rows.append((i, scenes[other].captions[int(rng.integers(5))], 0))
    return rows


@torch.no_grad()
def yes_no_margins(
    adapter: ModelAdapter,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    batch_size: int = 32,
) -> np.ndarray:
    """The model's answer to each (image, prompt): yes-minus-no logit at the answer position.

    The same reading as extraction's `arrays/answer_margin`
    (probing.extraction.answers), computed here from the full forward's logits.
    """
    tokens = yes_no_tokens(adapter.processor.tokenizer)
    margins = []
    for start in range(0, len(prompts), batch_size):
        batch = adapter.build_batch(
            list(images[start : start + batch_size]), list(prompts[start : start + batch_size])
        )
        last = last_token_positions(batch["attention_mask"])
        logits = adapter.model(**adapter.to_model(batch)).logits
        at_answer = logits[torch.arange(len(last)), last.to(logits.device)]
        margins.append(answer_margins(at_answer, tokens).cpu().numpy())
    return np.concatenate(margins)


def caption_accuracy(adapter: ModelAdapter, scenes: Sequence[Scene], seed: int = 0) -> float:
    """Share of caption questions about ``scenes`` the model answers right (Yes iff true)."""
    rows = caption_rows(scenes, seed)
    margins = yes_no_margins(
        adapter,
        [scenes[i].image for i, _, _ in rows],
        [world.caption_prompt(caption) for _, caption, _ in rows],
    )
    labels = np.array([label for _, _, label in rows])
    return float(((margins > 0) == (labels == 1)).mean())


def _f1(named: list[set[str]], truth: list[set[str]]) -> float:
    """Micro-F1 of named against true category sets."""
    hits = sum(len(n & t) for n, t in zip(named, truth, strict=True))
    predicted = sum(len(n) for n in named)
    actual = sum(len(t) for t in truth)
    return 2 * hits / max(predicted + actual, 1)


@torch.no_grad()
def naming_scores(adapter: ModelAdapter, scenes: Sequence[Scene], batch_size: int = 32) -> dict:
    """Micro-F1 of the categories the model names (greedy answer to the naming prompt).

    Also the F1 of the best constant answer (naming the k most frequent
    categories of these scenes, best k), the trivial baseline to beat, and
    which categories the model names at all.
    """
    previous_side = adapter.padding_side
    adapter.set_padding_side("left")  # generation continues every row at the end
    named: list[set[str]] = []
    try:
        for start in range(0, len(scenes), batch_size):
            chunk = scenes[start : start + batch_size]
            batch = adapter.to_model(
                adapter.build_batch([s.image for s in chunk], [world.NAMING_PROMPT] * len(chunk))
            )
            out = adapter.model.generate(**batch, max_new_tokens=24, do_sample=False)
            texts = adapter.tokenizer.batch_decode(
                out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )
            named += [set(_CATEGORY.findall(text)) for text in texts]
    finally:
        adapter.set_padding_side(previous_side)
    truth = [{CATEGORY_NAMES[o.category_index] for o in s.objects} for s in scenes]
    counts = {c: sum(c in t for t in truth) for c in CATEGORY_NAMES}
    ranked = sorted(CATEGORY_NAMES, key=lambda c: -counts[c])
    constant = max(_f1([set(ranked[:k])] * len(truth), truth) for k in range(1, 11))
    return {
        "naming_f1": round(_f1(named, truth), 4),
        "constant_answer_f1": round(constant, 4),
        # The categories it ever names: a model that names only the most
        # frequent one scores exactly that constant answer's F1, whatever its family.
        "named_categories": sorted(set().union(*named)),
    }
