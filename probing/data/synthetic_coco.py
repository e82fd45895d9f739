"""A procedurally generated dataset written in real COCO format.

It stands in for MS COCO wherever the real one is absent (tests, the demo,
`:smoke` configs), and it is read back by the same pycocotools loader
(`probing.data.coco`) that reads real COCO, so that loader is what runs.

Layout (COCO 2017 style)::

    <root>/synthetic_coco.json            generation parameters (the cache key)
    <root>/<split>/<image_id:012d>.png    e.g. train2017/000001000001.png
    <root>/annotations/instances_<split>.json
    <root>/annotations/captions_<split>.json

Every image shows 1-4 flat shapes (the categories: circle, square, star, ...)
in one of several colours, of varying size and position, possibly
overlapping, on a plain background with a few distractor strokes. Each
category also has its own surface pattern (stripes, dots or a grid in a
second colour of its own over about 3/8 of the object; `CATEGORY_PATTERNS`),
so that, as with COCO's objects, what an object is can be seen in any small
part of it and not only in its outline. Categories
are drawn with a skewed frequency, like COCO's, so they overlap between
images. Each of the five captions mentions only a random subset of the
objects (the smallest object of some images is in none), with varying
wording, colour, size and position words, so captions do not imply all of
an image's category labels and captions of
different images can be close paraphrases (hard negatives exist).

Generation is deterministic: image `i` of a split depends only on
`(seed, split index, i)`. Instance areas are polygon areas and ignore
occlusion by later-drawn shapes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from probing.cache import publish_directory
from probing.data.synthetic_captions import object_attributes, write_captions

# Bump whenever the drawn content changes, so cached datasets are rebuilt.
GENERATOR_VERSION = 5
PARAMS_FILE = "synthetic_coco.json"

# (name, supercategory) in COCO category-id order (ids start at 1).
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("circle", "round"),
    ("square", "polygon"),
    ("triangle", "polygon"),
    ("star", "symbol"),
    ("hexagon", "polygon"),
    ("diamond", "polygon"),
    ("cross", "symbol"),
    ("pentagon", "polygon"),
    ("ring", "round"),
    ("arrow", "symbol"),
)
CATEGORY_NAMES: tuple[str, ...] = tuple(name for name, _ in CATEGORIES)

OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 220),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "beige": (225, 210, 175),
    "dark blue": (25, 35, 80),
    "light green": (175, 215, 170),
    "brown": (110, 75, 45),
}

# Each category's surface pattern: its own second colour (the accent, none of
# the object or background colours) over about 3/8 of its pixels, in a pattern
# of its own (period in pixels of the drawn image). Why: tiny vision towers
# trained for minutes on CPU did not learn to tell the outlines apart (image
# token ROC-AUC 0.56-0.69), so categories also differ locally, as COCO's
# objects do (fur, wheels, text); the object's colour still covers most of it
# (a quarter of accent left categories less readable, a half left colours less
# readable; measurements in probing/models/trained/train.py, TrainSettings). The pattern is fixed to the image axes (it does not
# turn with the shape) and draws no random numbers, so captions and
# annotations are those of generator version 4.
CATEGORY_PATTERNS: dict[str, tuple[str, int, tuple[int, int, int]]] = {
    "circle": ("dots", 8, (0, 210, 210)),  # cyan
    "square": ("horizontal stripes", 8, (255, 0, 170)),  # magenta
    "triangle": ("vertical stripes", 8, (255, 170, 200)),  # pink
    "star": ("diagonal stripes", 8, (160, 255, 0)),  # lime
    "hexagon": ("antidiagonal stripes", 8, (0, 120, 120)),  # teal
    "diamond": ("grid", 6, (120, 120, 0)),  # olive
    "cross": ("dots", 16, (120, 0, 30)),  # maroon
    "pentagon": ("horizontal stripes", 16, (130, 190, 255)),  # sky
    "ring": ("horizontal stripes", 4, (200, 170, 255)),  # lavender; drawn as an outline
    "arrow": ("vertical stripes", 16, (255, 120, 100)),  # salmon
}

# Zipf-like category frequencies, so some categories are common and some
# rare (as in COCO) and every pair of categories co-occurs somewhere.
_CATEGORY_WEIGHTS = 1.0 / np.arange(1, len(CATEGORIES) + 1) ** 0.7
_CATEGORY_WEIGHTS /= _CATEGORY_WEIGHTS.sum()


@dataclass(frozen=True)
class _DrawnObject:
    category_index: int
    colour: str
    polygon: list[tuple[float, float]]  # outer boundary, image coordinates
    area: float
    radius: float
    center: tuple[float, float]


def _regular_polygon(
    cx: float, cy: float, radii: Sequence[float], rotation: float
) -> list[tuple[float, float]]:
    """Vertices at equal angles around (cx, cy), cycling through `radii`."""
    n = len(radii)
    return [
        (
            cx + radii[i] * math.cos(rotation + 2 * math.pi * i / n),
            cy + radii[i] * math.sin(rotation + 2 * math.pi * i / n),
        )
        for i in range(n)
    ]


def _rotate(
    points: Sequence[tuple[float, float]], cx: float, cy: float, angle: float
) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _shape_polygon(name: str, cx: float, cy: float, r: float, rot: float):
    """The outline polygon of shape `name` of radius `r` centred at (cx, cy)."""
    if name in ("circle", "ring"):
        return _regular_polygon(cx, cy, [r] * 24, 0.0)
    if name == "square":
        return _regular_polygon(cx, cy, [r] * 4, rot)
    if name == "triangle":
        return _regular_polygon(cx, cy, [r] * 3, rot)
    if name == "pentagon":
        return _regular_polygon(cx, cy, [r] * 5, rot)
    if name == "hexagon":
        return _regular_polygon(cx, cy, [r] * 6, rot)
    if name == "star":
        return _regular_polygon(cx, cy, [r, 0.45 * r] * 5, rot)
    if name == "diamond":
        local = [(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)]
        return _rotate(local, cx, cy, rot)
    if name == "cross":
        a, b = r, 0.33 * r
        local = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b)]
        local += [(b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        return _rotate(local, cx, cy, rot)
    if name == "arrow":
        local = [(-r, -0.25 * r), (0.2 * r, -0.25 * r), (0.2 * r, -0.7 * r), (r, 0)]
        local += [(0.2 * r, 0.7 * r), (0.2 * r, 0.25 * r), (-r, 0.25 * r)]
        return _rotate(local, cx, cy, rot)
    raise ValueError(f"unknown synthetic shape {name!r}; known: {', '.join(CATEGORY_NAMES)}")


def _accent_mask(kind: str, period: int, height: int, width: int) -> np.ndarray:
    """[height, width] bool: where a pattern shows the accent (about 3/8 of the pixels)."""
    y, x = np.mgrid[0:height, 0:width]
    stripe = max(1, period * 3 // 8)
    if kind == "horizontal stripes":
        return y % period < stripe
    if kind == "vertical stripes":
        return x % period < stripe
    if kind == "diagonal stripes":
        return (x + y) % period < stripe
    if kind == "antidiagonal stripes":
        return (x - y) % period < stripe
    if kind == "dots":  # squares 5/8 of the period wide
        side = period * 5 // 8
        return (x % period < side) & (y % period < side)
    if kind == "grid":  # one-pixel lines (11/36 of the pixels at period 6)
        return (x % period == 0) | (y % period == 0)
    raise ValueError(f"unknown surface pattern {kind!r}")


def _draw_object(image: Image.Image, name: str, colour: str, polygon, thickness: int) -> None:
    """Draws one object in place: its colour, with its category's accent pattern."""
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    if name == "ring":
        draw.polygon(polygon, outline=255, width=thickness)
    else:
        draw.polygon(polygon, fill=255)
    inside = np.asarray(mask) > 0
    kind, period, accent = CATEGORY_PATTERNS[name]
    pixels = np.array(image)
    pixels[inside] = OBJECT_COLOURS[colour]
    pixels[inside & _accent_mask(kind, period, image.height, image.width)] = accent
    image.paste(Image.fromarray(pixels))


def _polygon_area(points: Sequence[tuple[float, float]]) -> float:
    """Shoelace formula."""
    twice = 0.0
    for (x0, y0), (x1, y1) in zip(points, [*points[1:], points[0]], strict=True):
        twice += x0 * y1 - x1 * y0
    return abs(twice) / 2.0


def _make_image(
    rng: np.random.Generator,
) -> tuple[Image.Image, str, list[_DrawnObject]]:
    width = int(rng.integers(96, 161))
    height = int(rng.integers(96, 121))
    background = list(BACKGROUND_COLOURS)[int(rng.integers(len(BACKGROUND_COLOURS)))]
    image = Image.new("RGB", (width, height), BACKGROUND_COLOURS[background])
    draw = ImageDraw.Draw(image)
    # Distractor strokes, so the background is not a single flat colour.
    base = np.array(BACKGROUND_COLOURS[background])
    for _ in range(int(rng.integers(0, 4))):
        shade = tuple(int(v) for v in np.clip(base + rng.integers(-40, 41, 3), 0, 255))
        xs = rng.integers(0, width, 2)
        ys = rng.integers(0, height, 2)
        draw.line([(int(xs[0]), int(ys[0])), (int(xs[1]), int(ys[1]))], fill=shade, width=2)

    objects = []
    short = min(width, height)
    for _ in range(int(rng.integers(1, 5))):
        category = int(rng.choice(len(CATEGORIES), p=_CATEGORY_WEIGHTS))
        colour = list(OBJECT_COLOURS)[int(rng.integers(len(OBJECT_COLOURS)))]
        radius = float(rng.uniform(0.12, 0.3)) * short
        cx = float(rng.uniform(radius, width - radius))
        cy = float(rng.uniform(radius, height - radius))
        name = CATEGORY_NAMES[category]
        polygon = _shape_polygon(name, cx, cy, radius, float(rng.uniform(0, 2 * math.pi)))
        thickness = max(2, int(radius * 0.35))
        _draw_object(image, name, colour, polygon, thickness)
        if name == "ring":
            area = math.pi * (radius**2 - (radius - thickness) ** 2)
        else:
            area = _polygon_area(polygon)
        objects.append(_DrawnObject(category, colour, polygon, area, radius, (cx, cy)))
    return image, background, objects


@dataclass(frozen=True)
class Scene:
    """Image ``index`` of split ``split_index``: pixels, drawn objects and captions."""

    image: Image.Image
    background: str
    objects: list[_DrawnObject]  # with their colours, which COCO has no field for
    captions: list[str]


def generate_scene(seed: int, split_index: int, index: int) -> Scene:
    """The image and captions ``generate_synthetic_coco`` writes for these indices."""
    rng = np.random.default_rng([seed, split_index, index])
    image, background, objects = _make_image(rng)
    written = write_captions(objects, CATEGORY_NAMES, background, image.width, image.height, rng)
    return Scene(image, background, objects, [text for text, _ in written])


def generate_synthetic_coco(
    root: str | os.PathLike[str],
    num_images: int,
    seed: int,
    splits: Sequence[str] = ("train2017",),
) -> str:
    """Writes `num_images` images per split and their annotations under `root`.

    Overwrites files of the same name; prefer `ensure_synthetic_coco`, which
    caches. Returns `root` as a string.
    """
    if num_images < 1:
        raise ValueError(f"synthetic num_images must be >= 1, got {num_images}")
    root = str(root)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    categories = [
        {"id": i + 1, "name": name, "supercategory": supercategory}
        for i, (name, supercategory) in enumerate(CATEGORIES)
    ]
    for split_index, split in enumerate(splits):
        image_dir = os.path.join(root, split)
        os.makedirs(image_dir, exist_ok=True)
        images, instances, captions = [], [], []
        for i in range(num_images):
            rng = np.random.default_rng([seed, split_index, i])
            image_id = (split_index + 1) * 1_000_000 + i + 1
            image, background, objects = _make_image(rng)
            file_name = f"{image_id:012d}.png"
            # Low compression: generation speed matters more than disk here.
            image.save(os.path.join(image_dir, file_name), compress_level=1)
            images.append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "width": image.width,
                    "height": image.height,
                    # The scene as drawn, so a caption's truth can be decided
                    # exactly (probing.data.truth); COCO readers ignore it.
                    "background": background,
                }
            )
            for obj in objects:
                xs = [min(max(x, 0.0), image.width) for x, _ in obj.polygon]
                ys = [min(max(y, 0.0), image.height) for _, y in obj.polygon]
                x0, y0 = min(xs), min(ys)
                instances.append(
                    {
                        "id": len(instances) + 1,
                        "image_id": image_id,
                        "category_id": obj.category_index + 1,
                        "bbox": [
                            round(x0, 2),
                            round(y0, 2),
                            round(max(xs) - x0, 2),
                            round(max(ys) - y0, 2),
                        ],
                        "area": round(obj.area, 2),
                        "segmentation": [[round(v, 2) for x, y in obj.polygon for v in (x, y)]],
                        "iscrowd": 0,
                        "attributes": object_attributes(obj, image.width, image.height),
                    }
                )
            for text, asserts in write_captions(
                objects, CATEGORY_NAMES, background, image.width, image.height, rng
            ):
                captions.append(
                    {
                        "id": len(captions) + 1,
                        "image_id": image_id,
                        "caption": text,
                        "asserts": asserts,
                    }
                )
        info = {
            "description": "probing synthetic COCO-format dataset",
            "version": str(GENERATOR_VERSION),
            "seed": seed,
        }
        _write_json(
            os.path.join(root, "annotations", f"instances_{split}.json"),
            {
                "info": info,
                "licenses": [],
                "images": images,
                "annotations": instances,
                "categories": categories,
            },
        )
        _write_json(
            os.path.join(root, "annotations", f"captions_{split}.json"),
            {"info": info, "licenses": [], "images": images, "annotations": captions},
        )
    return root


def _write_json(path: str, obj: object) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _params(num_images: int, seed: int, splits: Sequence[str]) -> dict:
    return {
        "format": "probing-synthetic-coco",
        "generator_version": GENERATOR_VERSION,
        "num_images": int(num_images),
        "seed": int(seed),
        "splits": list(splits),
    }


def _read_params(root: str) -> dict | None:
    try:
        with open(os.path.join(root, PARAMS_FILE)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def ensure_synthetic_coco(
    root: str | os.PathLike[str],
    num_images: int = 200,
    seed: int = 0,
    splits: Sequence[str] = ("train2017",),
) -> str:
    """Returns `root` holding the synthetic dataset, generating it if needed.

    The parameters are stored in `<root>/synthetic_coco.json`; the dataset
    is regenerated only when they differ. A `root` that exists, is not empty
    and was not written by this function is refused rather than overwritten.
    Safe when several processes call it at once: each generates into a
    private temporary directory and the first to finish moves it into place.
    """
    root = os.path.abspath(str(root))
    wanted = _params(num_images, seed, splits)
    if _read_params(root) == wanted:
        return root
    if os.path.isdir(root) and os.listdir(root) and _read_params(root) is None:
        raise FileExistsError(
            f"{root} exists, is not empty and holds no {PARAMS_FILE}: it is not a synthetic "
            "dataset written by probing. Point the synthetic cache_dir at an empty or new "
            "directory."
        )

    def build(staging: str) -> None:
        generate_synthetic_coco(staging, num_images, seed, splits)
        # The params file is written last: its presence marks a complete dataset.
        _write_json(os.path.join(staging, PARAMS_FILE), wanted)

    publish_directory(
        root,
        build,
        lambda path: _read_params(path) == wanted,
        staging_prefix=os.path.basename(root) + ".tmp",
    )
    return root
