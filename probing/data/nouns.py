"""Which categories a caption mentions: COCO's category names, synonyms and plurals.

`CategoryMatcher(category_names).mentioned(text)` lowercases the text, splits
it into words and matches the longest phrase first (up to three words), so
"hot dog" is a hot dog and not a dog, and "teddy bear" not a bear. Each
category matches its own name, the synonyms in `SYNONYMS` and the plurals
of both. The table is hand-made for MS COCO's 80 categories; it is an
estimate (captions say "a plate of food", or "orange" as a colour), used
to reject caption negatives that are probably true of their image and to
estimate how many kept negatives still are. Any other dataset's categories
match by name and plural only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Category -> further words for it in captions (singular; plurals are added).
# fmt: off
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "people", "man", "woman", "boy", "girl", "child", "kid", "guy", "lady", "player",
        "skier", "surfer", "snowboarder", "skateboarder", "rider", "baby", "toddler", "adult",
        "teenager", "gentleman", "pedestrian", "chef", "policeman", "batter", "catcher",
        "pitcher", "umpire", "tourist", "spectator", "soldier", "someone", "biker",
    ),
    "bicycle": ("bike", "cyclist"),
    "car": ("automobile", "sedan", "suv", "taxi", "cab", "jeep", "minivan"),
    "motorcycle": ("motorbike", "motor bike", "scooter", "moped", "dirt bike"),
    "airplane": ("aeroplane", "plane", "jet", "aircraft", "airliner", "jetliner"),
    "bus": ("double decker",),
    "train": ("locomotive", "tram"),
    "truck": ("pickup truck", "lorry", "firetruck", "fire truck"),
    "boat": ("ship", "sailboat", "kayak", "canoe", "yacht", "ferry"),
    "traffic light": ("stop light", "stoplight", "traffic signal"),
    "fire hydrant": ("hydrant",),
    "stop sign": (),
    "parking meter": ("meter",),
    "bench": (),
    "bird": (
        "pigeon", "seagull", "gull", "duck", "goose", "parrot", "owl", "eagle", "swan",
        "crow", "sparrow", "pelican", "hawk", "flamingo", "penguin",
    ),
    "cat": ("kitten", "kitty"),
    "dog": ("puppy", "pup", "poodle", "terrier", "retriever", "bulldog"),
    "horse": ("pony", "foal", "stallion"),
    "sheep": ("lamb", "ewe"),
    "cow": ("cattle", "bull", "calf", "ox"),
    "elephant": (),
    "bear": ("grizzly", "polar bear"),
    "zebra": (),
    "giraffe": (),
    "backpack": ("back pack", "knapsack", "rucksack"),
    "umbrella": ("parasol",),
    "handbag": ("purse", "hand bag"),
    "tie": ("necktie", "bow tie"),
    "suitcase": ("luggage", "suit case"),
    "frisbee": (),
    "skis": ("ski",),
    "snowboard": (),
    "sports ball": ("ball", "soccer ball", "football", "tennis ball", "basketball", "volleyball"),
    "kite": (),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "skateboard": ("skate board",),
    "surfboard": ("surf board",),
    "tennis racket": ("racket", "racquet"),
    "bottle": (),
    "wine glass": ("wineglass",),
    "cup": ("mug",),
    "fork": (),
    "knife": (),
    "spoon": (),
    "bowl": (),
    "banana": (),
    "apple": (),
    "sandwich": ("burger", "hamburger"),
    "orange": (),
    "broccoli": (),
    "carrot": (),
    "hot dog": ("hotdog",),
    "pizza": (),
    "donut": ("doughnut",),
    "cake": ("cupcake",),
    "chair": ("stool",),
    "couch": ("sofa",),
    "potted plant": ("houseplant", "plant", "flower pot"),
    "bed": (),
    "dining table": ("table",),
    "toilet": (),
    "tv": ("television",),
    "laptop": (),
    "mouse": ("computer mouse",),
    "remote": ("remote control", "controller"),
    "keyboard": (),
    "cell phone": ("cellphone", "phone", "smartphone", "mobile phone"),
    "microwave": (),
    "oven": ("stove",),
    "toaster": (),
    "sink": (),
    "refrigerator": ("fridge",),
    "book": (),
    "clock": (),
    "vase": (),
    "scissors": (),
    "teddy bear": ("teddy", "stuffed animal"),
    "hair drier": ("hair dryer", "blow dryer"),
    "toothbrush": (),
}
# fmt: on

# Plurals the suffix rules below get wrong.
# fmt: off
_IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "child": "children", "gentleman": "gentlemen",
    "policeman": "policemen", "person": "persons", "goose": "geese", "mouse": "mice",
    "knife": "knives", "calf": "calves", "ox": "oxen", "sheep": "sheep", "skis": "skis",
    "scissors": "scissors", "people": "people", "cattle": "cattle", "luggage": "luggage",
    "broccoli": "broccoli", "someone": "someone", "tv": "tvs",
}
# fmt: on

_MAX_WORDS = 3
_WORD = re.compile(r"[a-z0-9]+")


def plural(phrase: str) -> str:
    """The plural of a (last) noun: irregulars, -es after s/x/ch/sh, -ies after a consonant."""
    head, _, last = phrase.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        word = _IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "ch", "sh")):
        word = last + "es"
    elif last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u"):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def words(text: str) -> list[str]:
    """Lowercase words of a text, punctuation dropped."""
    return _WORD.findall(text.lower())


class CategoryMatcher:
    """Maps caption text to the category names it mentions."""

    def __init__(self, category_names: Iterable[str], synonyms=SYNONYMS):
        self.categories = list(category_names)
        self._phrases: dict[tuple[str, ...], str] = {}
        for name in self.categories:
            for form in (name, *synonyms.get(name, ())):
                for variant in (form, plural(form)):
                    key = tuple(words(variant))
                    # The category name itself wins over another's synonym.
                    if 0 < len(key) <= _MAX_WORDS and (variant == name or key not in self._phrases):
                        self._phrases[key] = name

    def mentioned(self, text: str) -> set[str]:
        """The categories `text` names, longest phrase first."""
        tokens = words(text)
        found: set[str] = set()
        position = 0
        while position < len(tokens):
            for size in range(min(_MAX_WORDS, len(tokens) - position), 0, -1):
                name = self._phrases.get(tuple(tokens[position : position + size]))
                if name is not None:
                    found.add(name)
                    position += size
                    break
            else:
                position += 1
        return found

    def all_present(self, text: str, present: Sequence[str] | set[str]) -> bool | None:
        """True if every mentioned category is present, False if one is not, None if none is named."""
        mentioned = self.mentioned(text)
        if not mentioned:
            return None
        return mentioned <= set(present)
