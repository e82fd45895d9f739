"""A workdir opens in the zarr ecosystem (issue 15, item 4): zarr-python and xarray.

Groups at the workdir, features/ and arrays/, and named axes on every array,
so `zarr.open_group(workdir)` walks the hierarchy and
`xr.open_zarr(workdir + "/features")` gives one Dataset with the values
probing reads. bfloat16 features are TensorStore-only (WORKSPACE.md).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from probing.store import layout
from probing.store.workdir import Workdir
from probing.testing.planted import planted_arrays, write_workdir

zarr = pytest.importorskip("zarr")
xr = pytest.importorskip("xarray")


def _workdir(tmp_path, num_labels=0, feature_dtype="float32"):
    arrays = planted_arrays(40, 4, 6, signal_layers=[2], num_labels=num_labels)
    location = str(tmp_path / "w")
    write_workdir(location, arrays, poolings=("mean", "last"), feature_dtype=feature_dtype)
    return location, Workdir(location)


@pytest.mark.parametrize("num_labels", [0, 3])
def test_zarr_open_group_walks_the_workdir_and_reads_what_probing_reads(tmp_path, num_labels):
    location, wd = _workdir(tmp_path, num_labels)
    with warnings.catch_warnings():
        # manifest.json and the like are not zarr nodes; zarr says so and skips them.
        warnings.simplefilter("ignore")
        root = zarr.open_group(location, mode="r")
        assert sorted(root.group_keys()) == ["arrays", "features"]
    for name in (layout.features("mean"), layout.features("last"), layout.LABELS, layout.GROUP):
        np.testing.assert_array_equal(root[name][...], wd.read_array(name))
    assert root[layout.features("mean")].metadata.dimension_names == ("row", "layer", "dim")
    label_axes = ("row", "category") if num_labels else ("row",)
    assert root[layout.LABELS].metadata.dimension_names == label_axes


def test_xarray_opens_features_and_arrays_as_datasets(tmp_path):
    location, wd = _workdir(tmp_path, num_labels=3)
    features = xr.open_zarr(f"{location}/{layout.FEATURES_DIR}", consolidated=False)
    assert set(features.data_vars) == {"mean", "last"}
    assert dict(features.sizes) == {"row": 40, "layer": 4, "dim": 6}
    np.testing.assert_array_equal(
        features["mean"].isel(layer=2).values, wd.read_array(layout.features("mean"))[:, 2]
    )
    arrays = xr.open_zarr(f"{location}/{layout.ARRAYS_DIR}", consolidated=False)
    assert arrays["label_mask"].dims == ("row", "category")
    np.testing.assert_array_equal(arrays["split"].values, wd.read_array(layout.SPLIT))
    # Without consolidated=False it still opens (xarray warns that it looked for
    # consolidated metadata first, which a workdir does not write).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert set(xr.open_zarr(f"{location}/features").data_vars) == {"mean", "last"}


def test_float16_features_read_alike(tmp_path):
    location, wd = _workdir(tmp_path, feature_dtype="float16")
    values = xr.open_zarr(f"{location}/features", consolidated=False)["mean"].values
    assert values.dtype == np.float16
    np.testing.assert_array_equal(values, wd.read_array(layout.features("mean")))


def test_bfloat16_features_are_tensorstore_only(tmp_path):
    # Documented in WORKSPACE.md: zarr-python has no bfloat16 data type, so a
    # bfloat16 store is read through TensorStore (or extracted as float16/float32).
    location, wd = _workdir(tmp_path, feature_dtype="float32")
    values = wd.read_array(layout.features("mean"))
    import ml_dtypes

    wd.write_array(layout.features("bf"), values.astype(ml_dtypes.bfloat16))
    assert wd.read_array(layout.features("bf")).dtype == ml_dtypes.bfloat16
    with pytest.raises(ValueError, match="bfloat16"):
        zarr.open_array(f"{location}/features/bf", mode="r")


def test_dimension_names_cover_every_contract_array():
    assert layout.dimension_names(layout.features("mean"), 3) == ("row", "layer", "dim")
    assert layout.dimension_names(layout.TOKEN_COUNTS, 2) == ("row", "token_kind")
    assert layout.dimension_names(layout.FIRST_TOKEN_IDS, 2) == ("row", "rank")
    assert layout.dimension_names(layout.WRITTEN, 1) == ("row",)
    # A user's own array gets distinct names, so its folder still opens as a Dataset.
    assert layout.dimension_names("arrays/extra", 3) == ("row", "extra_1", "extra_2")
