"""The captions of the synthetic COCO-format dataset, and what each asserts.

Each caption mentions a subset of an image's drawn objects, each with
optional size, colour and position words, in one of several sentence
templates (some naming the background). Next to its text the generator
records the caption's assertion, the facts it states, so its truth of any
image is known exactly (`probing.data.truth`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CAPTION_TEMPLATES: tuple[str, ...] = (
    "{List}.",
    "There is {list} in the picture.",
    "An image of {list} on a {bg} background.",
    "A {bg} background with {list}.",
    "This picture shows {list}.",
    "Someone drew {list}.",
    "{List}, drawn on {bg}.",
    "A simple drawing with {list} in it.",
    "We can see {list} against a {bg} backdrop.",
    "{List} on {bg}.",
    "On a {bg} background: {list}.",
)


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x")) else "s")


def _number_word(n: int) -> str:
    return {2: "two", 3: "three", 4: "four"}.get(n, str(n))


POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "middle": "in the middle",
}


def object_attributes(obj: Any, width: int, height: int) -> dict[str, str]:
    """What a caption may say of an object: colour, size word, position word."""
    relative = obj.radius / min(width, height)
    size = "small" if relative < 0.17 else "large" if relative > 0.25 else "medium"
    x, y = obj.center[0] / width, obj.center[1] / height
    if x < 0.35:
        position = "left"
    elif x > 0.65:
        position = "right"
    elif y < 0.35:
        position = "top"
    elif y > 0.65:
        position = "bottom"
    else:
        position = "middle"
    return {"colour": obj.colour, "size": size, "position": position}


def _describe(
    obj: Any, category_names: Sequence[str], width: int, height: int, rng: np.random.Generator
) -> tuple[str, dict]:
    """A noun phrase for one object and what it asserts (None: not said).

    The three draws happen in this order whatever is said, so the images and
    captions do not depend on which attributes are recorded.
    """
    attributes = object_attributes(obj, width, height)
    said_size = rng.random() < 0.5 and attributes["size"] != "medium"
    said_colour = rng.random() < 0.9
    said_position = rng.random() < 0.35
    claim = {
        "category": category_names[obj.category_index],
        "colour": obj.colour if said_colour else None,
        "size": attributes["size"] if said_size else None,
        "position": attributes["position"] if said_position else None,
    }
    words = [w for w in (claim["size"], claim["colour"], claim["category"]) if w]
    phrase = " ".join(words)
    if said_position:
        phrase += " " + POSITION_PHRASES[attributes["position"]]
    return phrase, claim


def _join_phrases(phrases: list[str]) -> str:
    """'a red star', 'two circles and a cross', 'a, b and c'."""
    counts: dict[str, int] = {}
    for p in phrases:
        counts[p] = counts.get(p, 0) + 1
    parts = []
    for phrase, count in counts.items():
        if count == 1:
            parts.append(_with_article(phrase))
        else:
            head, sep, tail = phrase.partition(" on the ")
            if not sep:
                head, sep, tail = phrase.partition(" at the ")
            words = head.split(" ")
            words[-1] = _plural(words[-1])
            parts.append(f"{_number_word(count)} {' '.join(words)}{sep}{tail}")
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def write_captions(
    objects: Sequence[Any],
    category_names: Sequence[str],
    background: str,
    width: int,
    height: int,
    rng: np.random.Generator,
) -> list[tuple[str, dict]]:
    """Five (caption, what it asserts) pairs, each mentioning a non-empty subset of the objects.

    The assertion is ``{"background": name or None, "objects": [{"category",
    "colour", "size", "position", "count"}, ...]}`` (None: not said; count:
    how many objects the phrase describes), the truth of the caption text.
    """
    captions: list[tuple[str, dict]] = []
    templates = rng.permutation(len(CAPTION_TEMPLATES))
    mentionable = list(range(len(objects)))
    # Like COCO annotators, captions often ignore the smallest object
    # entirely, so its category label is in no caption of the image.
    if len(objects) > 1 and rng.random() < 0.4:
        mentionable.remove(min(mentionable, key=lambda i: objects[i].area))
    for k in range(5):
        size = int(rng.integers(1, len(mentionable) + 1))
        chosen = sorted(rng.choice(mentionable, size=size, replace=False).tolist())
        described = [_describe(objects[i], category_names, width, height, rng) for i in chosen]
        listed = _join_phrases([phrase for phrase, _ in described])
        template = CAPTION_TEMPLATES[int(templates[k])]
        text = template.format(list=listed, List=listed[0].upper() + listed[1:], bg=background)
        # Grouped like _join_phrases: equal phrases become one counted mention.
        claims: dict[str, dict] = {}
        for phrase, claim in described:
            claims.setdefault(phrase, {**claim, "count": 0})["count"] += 1
        said_background = background if "{bg}" in template else None
        captions.append((text, {"background": said_background, "objects": list(claims.values())}))
    return captions
