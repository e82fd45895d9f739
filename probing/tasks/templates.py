"""Prompt templates: the named ones of both papers, validation and rendering.

A template is a Python format string with at most these placeholders:

* ``{caption}`` (caption tasks): the caption, one trailing period removed
  so templates can punctuate it themselves;
* ``{categories}`` (category tasks): Tao et al.'s object list, every name
  followed by a comma (``"dog, frisbee,"``); empty for NoCat prompts, in
  which case the rendered prompt's trailing space is dropped.

Any other placeholder is an error, so a typo such as ``{captions}`` fails
before extraction starts instead of producing thousands of wrong prompts.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass


class TemplateError(ValueError):
    """A prompt template is unknown or has placeholders the task cannot fill."""


@dataclass(frozen=True)
class NamedTemplate:
    kind: str  # "caption" or "category"
    text: str
    source: str  # where it comes from, for the docs and the manifest


_TAO_VARIANT3 = (
    "There can be several types of objects in this image, including up to eighty kinds of "
    "objects. These objects can be any color, including red, green, blue, orange, yellow, "
    "purple, pink, and etc. Some of these objects can be very huge, while others can be very "
    "small. In the meantime, there are also many objects which can be overlapping with others. "
    "Please look carefully at the image for any detailed information. Now, you can write which "
    "type of objects you can find in the image: {categories}"
)

TEMPLATES: dict[str, NamedTemplate] = {
    "study2025_caption": NamedTemplate(
        "caption", "This image contains: {caption}.\nIs this right?", "2025 study, caption task"
    ),
    "tao_caption": NamedTemplate(
        "caption",
        'This image describes "{caption}". Is it right? Answer:',
        "Tao et al. 2024, image-text entailment",
    ),
    "tao_objects": NamedTemplate(
        "category",
        "This image contains the following types of objects: {categories}",
        "Tao et al. 2024, NoCat / WithCat",
    ),
    "study2025_objects": NamedTemplate(
        "category",
        "This image contains the following types of object: {categories}",
        "2025 study, category task",
    ),
    "tao_variant1": NamedTemplate(
        "category",
        "What types of objects are there here? Please list them: {categories}",
        "Tao et al. 2024, Table 2 prompt 1",
    ),
    "tao_variant2": NamedTemplate(
        "category", "Objects in this picture are: {categories}", "Tao et al. 2024, Table 2 prompt 2"
    ),
    "tao_variant3": NamedTemplate("category", _TAO_VARIANT3, "Tao et al. 2024, Table 2 prompt 3"),
}

DEFAULT_TEMPLATE = {"caption": "study2025_caption", "category": "tao_objects"}
PLACEHOLDERS = {"caption": ("caption",), "category": ("categories",)}

# A bare word like "tao_capton" is a mistyped name, not a literal prompt.
_LOOKS_LIKE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def placeholders(template: str) -> list[str]:
    """The placeholder names of a format string, in order; malformed ones raise."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise TemplateError(f"prompt template {template!r} is malformed: {e}") from e
    return fields


def validate_template(template: str, kind: str, require_placeholder: bool = False) -> None:
    """Raises TemplateError unless `template` only uses `kind`'s placeholders."""
    if kind not in PLACEHOLDERS:
        raise TemplateError(f"unknown task kind {kind!r}; expected one of {sorted(PLACEHOLDERS)}")
    allowed = PLACEHOLDERS[kind]
    found = placeholders(template)
    unknown = [f for f in found if f not in allowed]
    if unknown:
        raise TemplateError(
            f"prompt template {template!r} has unknown placeholder(s) "
            f"{', '.join('{' + f + '}' for f in unknown)}; a {kind} template may use only "
            f"{', '.join('{' + a + '}' for a in allowed)} (write {{{{ and }}}} for literal braces)"
        )
    if require_placeholder and not found:
        raise TemplateError(
            f"prompt template {template!r} has no {{{allowed[0]}}} placeholder, which this "
            f"{kind} task needs"
        )


def resolve_template(prompt: str, kind: str, require_placeholder: bool = False) -> tuple[str, str]:
    """Maps config.task.prompt to (name, template text), validating it.

    `prompt` is "default", a name from TEMPLATES, or a literal template (its
    name is then "custom").
    """
    if prompt == "default":
        prompt = DEFAULT_TEMPLATE[kind]
    if prompt in TEMPLATES:
        named = TEMPLATES[prompt]
        if named.kind != kind:
            raise TemplateError(
                f"task.prompt={prompt!r} is a {named.kind} template but task.kind is {kind!r}; "
                f"{kind} templates: {', '.join(n for n, t in TEMPLATES.items() if t.kind == kind)}"
            )
        validate_template(named.text, kind, require_placeholder)
        return prompt, named.text
    if _LOOKS_LIKE_NAME.match(prompt):
        raise TemplateError(
            f"task.prompt={prompt!r} is not a known template name ({', '.join(TEMPLATES)}); "
            "give one of them or a literal template string"
        )
    if kind == "caption":
        require_placeholder = True
    validate_template(prompt, kind, require_placeholder)
    return "custom", prompt


def format_category_list(categories: Sequence[str]) -> str:
    """Tao et al.'s object list: "a, b, c," (every name followed by a comma)."""
    return " ".join(f"{name}," for name in categories)


def render_caption(template: str, caption: str) -> str:
    """The prompt of one caption row."""
    text = caption.strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return template.format(caption=text)


def render_categories(template: str, categories: Sequence[str]) -> str:
    """The prompt of one category row listing `categories` (may be empty)."""
    return template.format(categories=format_category_list(categories)).rstrip()
