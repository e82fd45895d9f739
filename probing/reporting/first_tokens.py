"""Tao et al.'s Table 1: first generated tokens with vs without a category, NoCat beside WithCat.

For one category c (Tao: person), the greedy first generated token of
images that contain c and of images that do not:

* NoCat: every row (one per image), split by whether the image contains c
  (examples.jsonl "present", from the instance annotations);
* WithCat: Tao's prompt for c lists every other category of the image, so
  "with c" is the rows whose target is c, and "without c" the rows that list
  all of an image's categories (target null) when c is not among them.

A NoCat and a WithCat workdir of the same model, prompt format, category
form and template are shown side by side, as in the paper; either one alone
gives its two columns.
"""

from __future__ import annotations

import collections
import csv
import os
from collections.abc import Sequence
from typing import Any

from probing.reporting.document import Block, Heading, Table
from probing.reporting.figures.style import file_stem
from probing.reporting.labels import category_form, prompt_format, template_name
from probing.reporting.tables import FIRST_TOKEN_FIELD, FirstTokenTable, first_token_cells
from probing.store.layout import EXAMPLES_JSONL
from probing.store.workdir import Workdir

DEFAULT_CATEGORY = "person"


def _greedy(example: dict[str, Any]) -> str | None:
    """The greedy first token; quoted when it is only whitespace, so a table shows it."""
    topk = example.get(FIRST_TOKEN_FIELD)
    if not topk:
        return None
    token = str(topk[0][0])
    return repr(token) if not token.strip() else token


def presence_groups(
    examples: Sequence[dict[str, Any]], category: str, withcat: bool
) -> tuple[list[str], list[str]]:
    """Greedy first tokens of the rows with and without `category`, as defined above."""
    with_c, without_c = [], []
    for example in examples:
        token = _greedy(example)
        if token is None:
            continue
        present = category in (example.get("present") or [])
        if withcat:
            target = example.get("target")
            if target == category:
                with_c.append(token)
            elif target is None and not present:
                without_c.append(token)
        else:
            (with_c if present else without_c).append(token)
    return with_c, without_c


def _frequencies(tokens: Sequence[str], top_k: int) -> list[tuple[str, float]]:
    counter = collections.Counter(tokens)
    top = counter.most_common(top_k)
    others = len(tokens) - sum(count for _, count in top)
    return [(t, c / len(tokens)) for t, c in top] + [("OTHERS", others / len(tokens))]


def choose_category(examples: Sequence[dict[str, Any]], requested: str = "") -> str:
    """`requested`, else person if any image has it, else the most frequent category."""
    counts = collections.Counter(n for e in examples for n in e.get("present") or [])
    if requested:
        return requested
    if DEFAULT_CATEGORY in counts or not counts:
        return DEFAULT_CATEGORY
    return counts.most_common(1)[0][0]


def table1(
    prompts: dict[str, Sequence[dict[str, Any]]], category: str, top_k: int = 10
) -> FirstTokenTable | None:
    """One table over {"NoCat": examples, "WithCat": examples} (either may be absent)."""
    groups: dict[str, list[tuple[str, float]]] = {}
    counts: dict[str, int] = {}
    for name in ("NoCat", "WithCat"):
        if name not in prompts:
            continue
        with_c, without_c = presence_groups(prompts[name], category, name == "WithCat")
        for side, tokens in ((f"with {category}", with_c), (f"without {category}", without_c)):
            if tokens:
                groups[f"{name}, {side}"] = _frequencies(tokens, top_k)
                counts[f"{name}, {side}"] = len(tokens)
    return FirstTokenTable(groups, counts) if groups else None


def table1_blocks(runs: Sequence, out_dir: str, category: str = "") -> list[Block]:
    """Table 1 of every NoCat / WithCat pair (or single) among category runs with first tokens."""
    pairs: dict[tuple, dict[str, tuple[Any, list]]] = {}
    for run in runs:
        if run.label_kind != "multilabel":
            continue
        task = run.config.get("task", {}) if isinstance(run.config, dict) else {}
        prompt = "WithCat" if task.get("category_prompt") == "withcat" else "NoCat"
        key = (run.model_name, prompt_format(run), category_form(run), template_name(run))
        slot = pairs.setdefault(key, {})
        if prompt in slot:
            continue
        workdir = Workdir(run.workdir)
        if not workdir.exists(EXAMPLES_JSONL):
            continue
        examples = workdir.read_jsonl(EXAMPLES_JSONL)
        if any(FIRST_TOKEN_FIELD in e for e in examples):
            slot[prompt] = (run, examples)
    blocks: list[Block] = []
    for (model, fmt, form, template), slot in pairs.items():
        if not slot:
            continue
        chosen = choose_category([e for _, ex in slot.values() for e in ex], category)
        table = table1({name: ex for name, (_, ex) in slot.items()}, chosen)
        if table is None:
            continue
        header, cells = first_token_cells(table)
        title = f"{model}, {form} categories, {fmt} prompt, {template}: category {chosen}"
        blocks.append(Heading(title, 3))
        note = (
            f"Greedy first generated token after the prompt, as a share of the rows of "
            f"images with / without {chosen}; WithCat rows are Tao's prompt for {chosen} "
            "(the image's other categories listed). OTHERS sums every token below the top 10."
        )
        blocks.append(Table(header, cells, note=note))
        stem = file_stem("table1_first_tokens", model, form, fmt, template, chosen)
        with open(os.path.join(out_dir, stem + ".csv"), "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(cells)
    if blocks:
        blocks.insert(0, Heading("First generated tokens by category (Tao et al., Table 1)"))
    return blocks
