"""The extraction config: data, task, model and extraction settings in one tree.

Config files in configs/ start from `extraction_config()` and change what
their run needs; every field is documented where it is defined (the data and
task fields in probing.data / probing.tasks, the model fields in
probing.models).
"""

from __future__ import annotations

import ml_collections

from probing.data import default_data_config
from probing.models import default_model_config
from probing.tasks import default_task_config


def extract_settings() -> ml_collections.ConfigDict:
    """How stage 1 runs: batching, poolings, storage dtype, logging."""
    config = ml_collections.ConfigDict()
    # Rows per forward pass; also the row size of a feature chunk, so that
    # parallel writers (torchrun ranks) never share a chunk.
    config.batch_size = 8
    # Poolings written in one pass, each to features/<name>: mean, max, last,
    # first, index:K, image_mean, text_mean (see probing.extraction.pooling).
    config.poolings = ("mean", "last")
    # Storage dtype of features/*: float32, float16 or bfloat16. float16 halves
    # the store; probes standardise per layer, so its precision suffices.
    config.feature_dtype = "float32"
    # DataLoader worker processes that decode images; 0 decodes in-process.
    config.num_workers = 0
    # Seconds between progress lines.
    config.log_every_s = 10.0
    return config


def extraction_config() -> ml_collections.ConfigDict:
    """Defaults for every extraction field; configs/*.py override some."""
    config = ml_collections.ConfigDict()
    # One seed for everything random in stage 1: splits, negative captions,
    # candidate categories, prompt shuffles.
    config.seed = 0
    config.data = default_data_config()
    config.task = default_task_config()
    config.model = default_model_config()
    config.extract = extract_settings()
    # Replace an existing workdir written with a different configuration
    # instead of refusing it (a matching workdir is always resumed).
    config.overwrite = False
    return config
