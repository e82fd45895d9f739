"""Tests of the prompt template registry, validation and rendering."""

import pytest

from probing.tasks.templates import (
    TEMPLATES,
    TemplateError,
    render_caption,
    render_categories,
    resolve_template,
)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_named_template_renders(name):
    named = TEMPLATES[name]
    kind = named.kind
    assert resolve_template(name, kind) == (name, named.text)
    if kind == "caption":
        prompt = render_caption(named.text, "A dog catches a frisbee.")
        assert "A dog catches a frisbee" in prompt and "{" not in prompt
        assert ".." not in prompt and '."' not in prompt
    else:
        listed = render_categories(named.text, ["dog", "frisbee"])
        assert listed.endswith("dog, frisbee,")
        bare = render_categories(named.text, [])
        assert "{" not in bare and bare == bare.rstrip() and not bare.endswith(",")


def test_paper_prompts_verbatim():
    _, tao = resolve_template("tao_caption", "caption")
    assert render_caption(tao, "A cat.") == 'This image describes "A cat". Is it right? Answer:'
    _, study = resolve_template("default", "caption")
    assert render_caption(study, "A cat") == "This image contains: A cat.\nIs this right?"
    _, objects = resolve_template("default", "category")
    assert render_categories(objects, []) == "This image contains the following types of objects:"


def test_literal_templates():
    assert resolve_template("Is {caption} true?", "caption") == ("custom", "Is {caption} true?")
    assert resolve_template("Objects: {categories}", "category")[0] == "custom"
    assert resolve_template("Just look.", "category")[0] == "custom"
    assert render_caption("{{x}} {caption}", "y") == "{x} y"


@pytest.mark.parametrize(
    ("prompt", "kind", "message"),
    [
        ("Is {captions} right?", "caption", r"unknown placeholder\(s\) \{captions\}"),
        ("Objects: {caption}", "category", r"unknown placeholder\(s\) \{caption\}"),
        ("Is {} right?", "caption", r"unknown placeholder"),
        ("Is {caption right?", "caption", "malformed"),
        ("Is this right?", "caption", r"no \{caption\} placeholder"),
        ("tao_capton", "caption", "not a known template name"),
        ("tao_objects", "caption", "is a category template but task.kind is 'caption'"),
    ],
)
def test_bad_templates(prompt, kind, message):
    with pytest.raises(TemplateError, match=message):
        resolve_template(prompt, kind)


def test_withcat_needs_a_categories_placeholder():
    with pytest.raises(TemplateError, match=r"no \{categories\} placeholder"):
        resolve_template("Just look.", "category", require_placeholder=True)
