"""Whether a caption is true of an image: exactly on generated data, by noun match on COCO.

A negative caption of an image must be false of it. Two judges:

* `SceneTruth` (exact): the generated dataset records, for every caption,
  what it asserts (objects with optional colour, size and position words and
  a count, and possibly the background) and, for every image, what was drawn
  (`probing.data.synthetic_captions`). A caption is true of an image when the
  background matches (if named) and its mentioned objects can be matched to
  distinct drawn objects with every stated attribute equal, as the generator
  would have described them.
* `NounTruth` (estimate, any COCO-format data): the caption's category
  mentions (`probing.data.nouns`) are all among the image's
  instance-annotation categories. A caption naming no category cannot be
  judged (None). The estimate misses true captions with no category noun
  and flags false ones whose wrong detail is not a category ("a red bus" on
  an image with a blue bus).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from probing.data.coco import CocoDataset, DatasetError
from probing.data.nouns import CategoryMatcher

# What a truth check may be asked to be (config field task.negative_check).
CHECK_KINDS = ("auto", "exact", "noun_match", "none")
_ATTRIBUTES = ("colour", "size", "position")


class NounTruth:
    """Noun-match estimate: every mentioned category is annotated in the image."""

    kind = "noun_match"

    def __init__(self, dataset: CocoDataset, min_area: float = 0.0):
        self._dataset = dataset
        self._min_area = min_area
        self._matcher = CategoryMatcher(dataset.category_names)
        self._present: dict[int, set[str]] = {}
        self._mentions: dict[str, set[str]] = {}

    def mentioned(self, caption: str) -> set[str]:
        """The categories the caption names (cached per text)."""
        found = self._mentions.get(caption)
        if found is None:
            found = self._mentions[caption] = self._matcher.mentioned(caption)
        return found

    def is_true(self, caption: str, image_id: int) -> bool | None:
        """True / False by noun match; None when the caption names no category."""
        mentioned = self.mentioned(caption)
        if not mentioned:
            return None
        present = self._present.get(image_id)
        if present is None:
            present = self._present[image_id] = self._dataset.categories(image_id, self._min_area)
        return mentioned <= present


def _matches(claim: dict[str, Any], thing: dict[str, Any]) -> bool:
    if claim["category"] != thing["category"]:
        return False
    return all(claim[a] is None or claim[a] == thing[a] for a in _ATTRIBUTES)


def _assign(claims: Sequence[dict[str, Any]], things: Sequence[dict[str, Any]], used: int) -> bool:
    """Whether claims can go to distinct things (bitmask `used` taken); at most 4 of each."""
    if not claims:
        return True
    first, rest = claims[0], claims[1:]
    return any(
        not used & (1 << k) and _matches(first, thing) and _assign(rest, things, used | (1 << k))
        for k, thing in enumerate(things)
    )


def assertion_holds(asserts: dict[str, Any], scene: dict[str, Any]) -> bool:
    """Whether a caption's assertion is true of a drawn scene (see the module docstring)."""
    if asserts["background"] is not None and asserts["background"] != scene["background"]:
        return False
    claims = [claim for claim in asserts["objects"] for _ in range(int(claim["count"]))]
    if len(claims) > len(scene["objects"]):
        return False
    return _assign(claims, scene["objects"], 0)


class SceneTruth:
    """Exact truth from the generator's records of captions and scenes."""

    kind = "exact"

    def __init__(self, dataset: CocoDataset):
        self._dataset = dataset
        self._asserts: dict[str, list[dict[str, Any]]] = {}
        for image_id in dataset.image_ids:
            for annotation in dataset.caption_annotations(image_id):
                text = str(annotation["caption"]).strip()
                known = self._asserts.setdefault(text, [])
                if annotation["asserts"] not in known:
                    known.append(annotation["asserts"])
        self._scenes: dict[int, dict[str, Any]] = {}

    def scene(self, image_id: int) -> dict[str, Any]:
        """{"background", "objects": [{"category", "colour", "size", "position"}]}."""
        scene = self._scenes.get(image_id)
        if scene is None:
            names = dict(zip(self._dataset.category_ids, self._dataset.category_names, strict=True))
            objects = [
                {"category": names[int(a["category_id"])], **a["attributes"]}
                for a in self._dataset.instance_annotations(image_id)
            ]
            background = self._dataset.image_info(image_id)["background"]
            scene = self._scenes[image_id] = {"background": background, "objects": objects}
        return scene

    def is_true(self, caption: str, image_id: int) -> bool | None:
        """Exact truth; None for a text the dataset never recorded."""
        interpretations = self._asserts.get(caption.strip())
        if interpretations is None:
            return None
        scene = self.scene(image_id)
        return any(assertion_holds(a, scene) for a in interpretations)


def records_scenes(dataset: CocoDataset) -> bool:
    """Whether every image, instance and caption carries the generator's scene record."""
    for image_id in dataset.image_ids:
        if "background" not in dataset.image_info(image_id):
            return False
        if any("attributes" not in a for a in dataset.instance_annotations(image_id)):
            return False
        if any("asserts" not in a for a in dataset.caption_annotations(image_id)):
            return False
    return True


def caption_truth(
    dataset: CocoDataset, kind: str = "auto", min_area: float = 0.0
) -> SceneTruth | NounTruth | None:
    """The truth check `kind` names; "auto" is exact where the data allows it."""
    if kind not in CHECK_KINDS:
        raise ValueError(
            f"task.negative_check={kind!r} is not valid; expected one of "
            f"{', '.join(repr(k) for k in CHECK_KINDS)}"
        )
    if kind == "none":
        return None
    if kind == "noun_match":
        return NounTruth(dataset, min_area)
    if records_scenes(dataset):
        return SceneTruth(dataset)
    if kind == "exact":
        raise DatasetError(
            f"task.negative_check='exact' needs a dataset that records what each caption "
            f"asserts (the generated one); {dataset.root} does not. Use 'auto' or 'noun_match'."
        )
    return NounTruth(dataset, min_area)
