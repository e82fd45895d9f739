"""bfloat16 extraction on the CPU, end to end: a bf16 model writing bf16 features.

The README's "Extraction on CPU" says a CPU-only user can run the model and
store the features in bfloat16 (`model.dtype` and `extract.feature_dtype`).
This runs both on the tiny random checkpoint through `probing.extraction.runner.extract`
and checks the workdir against a float32 run of the same config: the same
rows, bf16 on disk, and features that agree with float32 up to bf16
rounding through three decoder layers.
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

from probing.extraction.runner import extract
from probing.store.workdir import Workdir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

# bf16 keeps 8 mantissa bits (relative rounding 2^-9 ≈ 0.002 per op); after the
# embedding, 3 layers and the poolings each [row, layer] vector stays within
# ‖bf16 − float32‖ / ‖float32‖ ≤ 0.007 of the float32 run (seen). 0.03 leaves
# room and still fails a 5 % scale error or rows out of place (another row of
# the same layer is 0.4–1.9 away here).
MAX_RELATIVE_ERROR = 0.03


def _config(dtype: str):
    from configs.demo import get_config

    config = get_config("qwen2_vl,tiny")
    config.data.synthetic.num_images = 12
    config.task.split_sizes.val = 2
    config.task.split_sizes.test = 2
    config.task.similarity_stats = False
    config.extract.batch_size = 4
    config.extract.poolings = ("mean", "last")
    config.model.device = "cpu"
    config.model.dtype = dtype
    config.extract.feature_dtype = dtype
    return config


def _relative_errors(values: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """‖values − expected‖ / ‖expected‖ of each [row, layer] vector."""
    values, expected = values.astype(np.float64), expected.astype(np.float64)
    return np.linalg.norm(values - expected, axis=-1) / np.linalg.norm(expected, axis=-1)


def test_bfloat16_model_and_features_on_cpu(tmp_path):
    reference_dir, bf16_dir = str(tmp_path / "float32"), str(tmp_path / "bfloat16")
    extract(_config("float32"), reference_dir)
    manifest = extract(_config("bfloat16"), bf16_dir)

    assert manifest["complete"] is True
    assert manifest["dtype"] == "bfloat16" and manifest["feature_dtype"] == "bfloat16"
    reference, bf16 = Workdir(reference_dir), Workdir(bf16_dir)
    assert bf16.read_array("arrays/written").all()

    # The same examples in the same rows: only the arithmetic differs (the
    # model's own top tokens may reorder under bf16 rounding, so they are left out).
    def rows(workdir):
        return [
            {k: v for k, v in e.items() if k != "first_token_topk"}
            for e in workdir.read_jsonl("examples.jsonl")
        ]

    assert rows(bf16) == rows(reference)
    for pooling in ("mean", "last"):
        with open(os.path.join(bf16_dir, "features", pooling, "zarr.json")) as f:
            assert json.load(f)["data_type"] == "bfloat16"
        values = bf16.read_array(f"features/{pooling}")
        expected = reference.read_array(f"features/{pooling}")
        assert values.dtype == ml_dtypes.bfloat16 and values.shape == expected.shape
        assert np.isfinite(values.astype(np.float32)).all()
        errors = _relative_errors(values.astype(np.float32), expected)
        assert errors.max() < MAX_RELATIVE_ERROR, (pooling, errors.max(axis=0))
