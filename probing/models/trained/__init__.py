"""Tiny VLMs trained on the generated COCO world: the ``trained:<family>`` checkpoints.

``tiny:<family>`` is a random checkpoint (for tests of the loading path);
``trained:<family>`` is the same architecture trained by
``python -m probing.models.train_tiny --family=<family>`` until it answers the
world's caption questions, so that probes find a real depth profile and a
pipeline bug shows up as lost signal. The checkpoints are committed under
``probing/models/trained/checkpoints/<family>/`` (about 1.4 MB each, with a
model card) because training takes minutes and every test session starts from
an empty cache; ``$PROBING_TRAINED_CHECKPOINTS`` points elsewhere.
"""

from __future__ import annotations

import os

from probing.models.loading import ModelLoadError, register_checkpoint_source

# Environment variable naming another directory of trained checkpoints.
CHECKPOINTS_ENV = "PROBING_TRAINED_CHECKPOINTS"
# The families the training command knows (probing.models.trained.families).
TRAINED_FAMILIES = ("fast_vlm", "qwen2_vl")


def checkpoint_root() -> str:
    """$PROBING_TRAINED_CHECKPOINTS, else the checkpoints shipped in this package."""
    return os.environ.get(CHECKPOINTS_ENV) or os.path.join(os.path.dirname(__file__), "checkpoints")


def checkpoint_dir(family: str) -> str:
    """Where the trained ``family`` checkpoint lives (whether or not it exists)."""
    return os.path.join(checkpoint_root(), family)


def trained_checkpoint(family: str) -> str:
    """The directory of the trained ``family`` checkpoint; says how to build a missing one."""
    path = checkpoint_dir(family)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelLoadError(
            f"model.name 'trained:{family}': no trained checkpoint at {path}. Build it with "
            f"`python -m probing.models.train_tiny --family={family}` (5-10 minutes on 2 CPU "
            f"cores), or use 'tiny:{family}' for the random checkpoint of the same architecture"
        )
    return path


def trained_families() -> tuple[str, ...]:
    """Families with a ``trained:`` name (their checkpoint may still need building)."""
    return TRAINED_FAMILIES


# model.name "trained:<family>" resolves to trained_checkpoint(family).
register_checkpoint_source("trained", trained_checkpoint, trained_families)
