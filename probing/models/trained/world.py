"""The generated world the embedded models learn: scenes, questions, answers and word truths.

Training images are generated scenes with seed :data:`WORLD_SEED` (split
index 0), held-out images the same seed's split index 1. The demo, the smoke
configs and the tests draw their images with seed 0 (``data.synthetic.seed``),
so no image a probe or test is scored on was ever seen in training.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from probing.data.synthetic_coco import (
    BACKGROUND_COLOURS,
    CATEGORY_NAMES,
    OBJECT_COLOURS,
    Scene,
    generate_scene,
)
from probing.tasks.templates import TEMPLATES, render_caption

# Generator seed of every training and held-out image (the demo's is 0).
WORLD_SEED = 1000
TRAIN_SPLIT_INDEX = 0
HELD_OUT_SPLIT_INDEX = 1

# The caption question the model answers: the 2025 study's prompt (study2025 preset).
CAPTION_TEMPLATE = TEMPLATES["study2025_caption"].text
NAMING_PROMPT = "What objects are in this image?"
YES, NO = "Yes", "No"

COLOURS: tuple[str, ...] = tuple(OBJECT_COLOURS)
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_COLOURS)
# Layout of a presence vector: object colours, categories, background (one-hot).
PRESENCE_SIZE = len(COLOURS) + len(CATEGORY_NAMES) + len(BACKGROUNDS)
# Layout of a cell target: categories then colours of the objects covering the cell.
CELL_TARGET_SIZE = len(CATEGORY_NAMES) + len(COLOURS)
# A cell counts an object when the object covers this fraction of it.
_CELL_COVERAGE = 0.15

_SIZE_WORDS = ("small", "large")
_BACKGROUND_WORDS = {name.split()[-1]: name for name in BACKGROUNDS if " " not in name}
_SHAPE_WORDS = {name: name for name in CATEGORY_NAMES} | {
    name + ("es" if name.endswith(("s", "x")) else "s"): name for name in CATEGORY_NAMES
}
_WORD = re.compile(r"[A-Za-z]+")


def scene(split_index: int, index: int) -> Scene:
    """Image ``index`` of the training (0) or held-out (1) part of the world."""
    return generate_scene(WORLD_SEED, split_index, index)


def caption_prompt(caption: str) -> str:
    """The entailment question for ``caption``, exactly as the caption task renders it."""
    return render_caption(CAPTION_TEMPLATE, caption)


def naming_answer(item: Scene) -> str:
    """The objects of a scene as the model should name them: "a red circle, a blue star."."""
    phrases = sorted({f"{item_colour} {CATEGORY_NAMES[c]}" for c, item_colour in _objects(item)})
    return ", ".join(phrases) + "."


def _objects(item: Scene) -> set[tuple[int, str]]:
    return {(obj.category_index, obj.colour) for obj in item.objects}


def presence_vector(item: Scene) -> np.ndarray:
    """Which colours and categories the scene holds, and its background (one-hot)."""
    vector = np.zeros(PRESENCE_SIZE, np.float32)
    for category, colour in _objects(item):
        vector[COLOURS.index(colour)] = 1
        vector[len(COLOURS) + category] = 1
    vector[len(COLOURS) + len(CATEGORY_NAMES) + BACKGROUNDS.index(item.background)] = 1
    return vector


def word_truths(text: str, item: Scene) -> list[tuple[int, int, bool]]:
    """(start, end, true) for every checkable word of ``text`` about scene ``item``.

    Colour words are true if an object of that colour is drawn; background
    words ("grey", "light green") if the background is that; shape words if
    an object of that shape, and of the colour named just before it (size
    words skipped), is drawn. Other words are not checkable and left out.
    """
    objects = _objects(item)
    words = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(text)]
    truths = []
    for i, (start, end, word) in enumerate(words):
        previous = words[i - 1][2] if i else ""
        if word in COLOURS and previous in ("light", "dark"):
            truths.append((start, end, item.background == f"{previous} {word}"))
        elif word in COLOURS:
            truths.append((start, end, any(colour == word for _, colour in objects)))
        elif word in _BACKGROUND_WORDS:
            truths.append((start, end, item.background == _BACKGROUND_WORDS[word]))
        elif word in _SHAPE_WORDS:
            j = i - 1
            while j >= 0 and words[j][2] in _SIZE_WORDS:
                j -= 1
            colour = None
            if (
                j >= 0
                and words[j][2] in COLOURS
                and (j == 0 or words[j - 1][2] not in ("light", "dark"))
            ):
                colour = words[j][2]
            category = CATEGORY_NAMES.index(_SHAPE_WORDS[word])
            truths.append(
                (
                    start,
                    end,
                    any(c == category and colour in (None, col) for c, col in objects),
                )
            )
    return truths


def perturb_caption(caption: str, item: Scene, rng) -> str | None:
    """``caption`` with one colour or shape word swapped for one ``item`` lacks, or None.

    A near-miss negative: every other word still holds, so the answer turns
    on one word (random negatives often differ in many).
    """
    colours = {colour for _, colour in _objects(item)}
    categories = {CATEGORY_NAMES[c] for c, _ in _objects(item)}
    words = [m for m in _WORD.finditer(caption)]
    choices = []
    for i, m in enumerate(words):
        word = m.group()
        previous = words[i - 1].group().lower() if i else ""
        if word in COLOURS and previous not in ("light", "dark"):
            absent = [c for c in COLOURS if c not in colours]
            choices += [(m, c) for c in absent]
        elif word in _SHAPE_WORDS:
            plural = word != _SHAPE_WORDS[word]
            absent = [n for n in CATEGORY_NAMES if n not in categories]
            choices += [
                (m, n + ("es" if n.endswith(("s", "x")) else "s") if plural else n) for n in absent
            ]
    if not choices:
        return None
    m, replacement = choices[int(rng.integers(len(choices)))]
    return caption[: m.start()] + replacement + caption[m.end() :]


def cell_targets(item: Scene, size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Multi-hot [rows * cols, CELL_TARGET_SIZE]: what covers each image-token cell.

    ``size`` is the (width, height) the processor resizes the image to and
    ``grid`` the (rows, cols) of image tokens over it, in the model's token
    order (row-major). Objects are rasterised in drawing order, so later ones
    occlude earlier ones as in the image.
    """
    coverage = object_coverage(item, size, grid)
    targets = np.zeros((coverage.shape[1], CELL_TARGET_SIZE), np.float32)
    for k, obj in enumerate(item.objects):
        covered = coverage[k] >= _CELL_COVERAGE
        targets[covered, obj.category_index] = 1
        targets[covered, len(CATEGORY_NAMES) + COLOURS.index(obj.colour)] = 1
    return targets


def object_coverage(item: Scene, size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """[objects, rows * cols]: the share of each image-token cell each object covers.

    Arguments as :func:`cell_targets`; later objects occlude earlier ones.
    """
    width, height = size
    rows, cols = grid
    sx, sy = width / item.image.width, height / item.image.height
    labels = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(labels)
    for k, obj in enumerate(item.objects):
        polygon = [(x * sx, y * sy) for x, y in obj.polygon]
        if CATEGORY_NAMES[obj.category_index] == "ring":
            draw.polygon(polygon, outline=k + 1, width=max(2, int(obj.radius * 0.35 * sx)))
        else:
            draw.polygon(polygon, fill=k + 1)
    owner = np.asarray(labels)
    cell_h, cell_w = height // rows, width // cols
    owner = owner[: rows * cell_h, : cols * cell_w].reshape(rows, cell_h, cols, cell_w)
    owner = owner.transpose(0, 2, 1, 3).reshape(rows * cols, cell_h * cell_w)
    return np.stack([(owner == k + 1).mean(axis=1) for k in range(len(item.objects))]).astype(
        np.float32
    )


def tokenizer_corpus(texts: Sequence[str]) -> Iterator[str]:
    """Text the embedded models' tokenizer is trained on: ``texts`` and every prompt."""
    yield from texts
    for template in TEMPLATES.values():
        yield template.text.replace("{caption}", "a red circle").replace(
            "{categories}", ", ".join(CATEGORY_NAMES) + ","
        )
    # Chat-template text and answers, repeated so that they merge into whole tokens.
    for _ in range(50):
        yield "system\nYou are a helpful assistant.\nuser\n"
        yield "assistant\n"
        yield f"{NAMING_PROMPT}\n{YES}\n{NO}\n"
        yield "This image contains: a red circle.\nIs this right?"
