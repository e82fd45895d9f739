"""Tests of the training load path: FeatureReader, the sharded feature layout, layer grouping."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import tensorstore as ts

from probing.probes import data as data_module
from probing.probes import devices
from probing.probes import programs as programs_module
from probing.probes import sweep as sweep_module
from probing.probes.data import FeatureReader, load_labels
from probing.probes.settings import SweepSettings
from probing.probes.sweep import run_streaming_sweep, run_sweep
from probing.store import integrity
from probing.store.integrity import FeatureError, check_feature_chunks, scan_values
from probing.store.layout import features as features_array
from probing.testing.planted import planted_arrays, write_workdir

# 130 rows in 64-row chunks: the last chunk is partial.
ROWS, LAYERS, DIM = 130, 5, 8


def _store(location, sharded=True, written=None, dtype="float16", dim=DIM):
    arrays = planted_arrays(ROWS, LAYERS, dim, [2], strength=4.0, seed=3)
    workdir = write_workdir(location, arrays, written=written, feature_dtype=dtype, sharded=sharded)
    return workdir, arrays["features"].astype(dtype)


def _reference(values, rows, layers):
    """What load_features returned before FeatureReader: [L, N, D] of the written rows."""
    return np.moveaxis(values[rows][:, layers], 1, 0)


@pytest.mark.parametrize("sharded", [True, False])
@pytest.mark.parametrize("partial", [False, True])
def test_reader_fills_buffers_bitwise_as_the_old_load(tmp_path, sharded, partial):
    written = None
    if partial:
        written = np.ones(ROWS, np.uint8)
        written[[0, 5, 63, 64, 100]] = 0
        written[70:128] = 0  # a whole chunk unwritten: skipped
    workdir, values = _store(str(tmp_path), sharded, written)
    labels = load_labels(workdir)
    reader = FeatureReader(workdir, "mean", labels)
    # Layer groups as the sweep asks for them: runs, gaps and a padded repeat.
    for layers in ([0, 1, 2, 3, 4], [1, 2], [4, 4], [3, 0, 1]):
        out = np.full((labels.rows.size, len(layers), DIM), np.nan, values.dtype)
        reader.read_into(out, layers)
        expected = _reference(values, labels.rows, layers)
        np.testing.assert_array_equal(np.moveaxis(out, 1, 0), expected)
    assert reader.max_abs == float(np.abs(values[labels.rows].astype(np.float32)).max())


def test_all_targets_are_read_in_one_pass_over_the_rows(tmp_path, monkeypatch):
    """Two devices' layers of a group are read in one pass over the rows, in row order (the
    multi-device placement is tested in test_probes_devices)."""
    monkeypatch.setattr(data_module, "_BLOCK_VALUES", 1)  # a block per chunk: 3 per pass
    workdir, values = _store(str(tmp_path))
    labels = load_labels(workdir)
    reader = FeatureReader(workdir, "mean", labels)
    starts = []
    start_read = reader._start_read

    def recording(run, block, out):
        starts.append((block[0], run[1]))  # (first row of the block, first layer)
        return start_read(run, block, out)

    reader._start_read = recording
    for _ in range(2):
        starts.clear()
        targets = [np.empty((labels.rows.size, k, DIM), values.dtype) for k in (2, 3)]
        reader.read_all([(targets[0], [0, 1]), (targets[1], [2, 3, 4])])
        rows = [row for row, _ in starts]
        assert len(set(rows)) == 3 and rows == sorted(rows), starts
        assert {layer for _, layer in starts} == {0, 2}  # both devices' runs, in one pass
        np.testing.assert_array_equal(targets[0], values[labels.rows][:, [0, 1]])
        np.testing.assert_array_equal(targets[1], values[labels.rows][:, [2, 3, 4]])


def _bytes_read():
    for metric in ts.experimental_collect_matching_metrics("/tensorstore/kvstore/file/bytes_read"):
        return sum(v["value"] for v in metric["values"])
    return 0


@pytest.mark.parametrize("sharded", [True, False])
def test_a_layer_group_read_reads_only_its_layers(tmp_path, sharded):
    # Inner chunks of 64 x 1024 float16 (128 kB): TensorStore does not merge
    # byte ranges across gaps that big, so the count is the group's bytes.
    dim = 1024
    workdir, _ = _store(str(tmp_path), sharded, dim=dim)
    reader = FeatureReader(workdir, "mean", load_labels(workdir))
    out = np.empty((ROWS, 2, dim), np.float16)
    before = _bytes_read()
    reader.read_into(out, [1, 2])
    read = _bytes_read() - before
    # Stored chunks are whole: the last shard's 2 rows are stored as 64.
    shards = -(-ROWS // 64)
    group_bytes = shards * 64 * 2 * dim * 2
    all_bytes = shards * 64 * LAYERS * dim * 2
    if sharded:
        # The two layers' bytes plus the shard indexes (16 bytes per inner chunk + 4).
        assert group_bytes <= read <= group_bytes + shards * (LAYERS * 16 + 4)
    else:
        assert read >= all_bytes  # a plain chunk holds every layer: all are read


def test_values_are_checked_as_they_load_naming_layer_and_rows(tmp_path):
    workdir, _ = _store(str(tmp_path))
    array = workdir.open_array(features_array("mean"))
    array[3, 2, 0].write(np.inf).result()
    array[7, 2, 1].write(np.nan).result()
    array[90, 4, 3].write(np.inf).result()
    labels = load_labels(workdir)
    reader = FeatureReader(workdir, "mean", labels)
    reader.read_into(np.empty((ROWS, 2, DIM), np.float16), [0, 1])  # clean layers pass
    with pytest.raises(FeatureError, match=r"mean: layer\(s\) 2 hold NaN or Inf in rows 3, 7;"):
        reader.read_into(np.empty((ROWS, 2, DIM), np.float16), [1, 2])
    with pytest.raises(FeatureError, match=r"layer\(s\) 2, 4 hold NaN or Inf in rows 3, 7, 90;"):
        reader.read_into(np.empty((ROWS, 3, DIM), np.float16), [2, 3, 4])
    huge = FeatureReader(workdir, "mean", labels, threshold=3.0)
    with pytest.raises(FeatureError, match=r"layer\(s\) 0 hold values beyond ±3 .* in rows"):
        huge.read_into(np.empty((ROWS, 1, DIM), np.float16), [0])


def test_missing_chunks_are_found_from_the_key_listing_and_while_loading(tmp_path):
    workdir, _ = _store(str(tmp_path))
    check_feature_chunks(workdir, "mean")
    kvstore = ts.KvStore.open(workdir.kvstore(features_array("mean"))).result()
    kvstore.delete_range(ts.KvStore.KeyRange("c/1/0/0", "c/1/0/0\0")).result()
    expected = r"chunk files of written rows are missing .* rows 64, 65, 66"
    with pytest.raises(FeatureError, match=expected):
        check_feature_chunks(workdir, "mean")
    labels = load_labels(workdir)
    with pytest.raises(FeatureError, match=expected):
        FeatureReader(workdir, "mean", labels).read_into(np.empty((ROWS, 1, DIM), np.float16), [3])
    written = np.ones(ROWS, bool)
    written[64:128] = False
    check_feature_chunks(workdir, "mean", written)  # unwritten rows may lack their chunk


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_scan_values_on_the_bits(dtype):
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)

    block = np.zeros((3, 2, 4), np.float32)
    block[0, 0] = [1.0, -7.5, 2.0, 0.0]
    block[1, 1, 2] = -np.inf
    block[2, 0, 3] = np.nan
    block[2, 1] = [-3.0, 0.5, 0.0, 0.25]
    nonfinite, magnitude = scan_values(block.astype(dtype))
    np.testing.assert_array_equal(nonfinite, [[0, 0], [0, 1], [1, 0]])
    np.testing.assert_array_equal(magnitude[~nonfinite], [7.5, 0.0, 0.0, 3.0])


def test_automatic_group_size_fits_the_budget():
    # limit = 0.6 x budget; one device pads a group to at least 2 layers. All
    # layers in one group when they fit, else two groups must fit (one trains
    # while the next is read): 2 x 5 x 100 <= 1000 -> 6 groups of <= 5 layers.
    assert devices.auto_layer_group_size(29, 100, None, budget=int(1000 / 0.6) + 1) == 5
    assert devices.auto_layer_group_size(29, 100, None, budget=int(1500 / 0.6) + 1) == 6
    assert devices.auto_layer_group_size(29, 100, None, budget=int(2900 / 0.6) + 1) == 29
    assert (
        devices.auto_layer_group_size(29, 100, None, budget=int(2899 / 0.6) + 1) == 10
    )  # 14 fit: 10, 10, 9
    assert devices.auto_layer_group_size(29, 100, None, budget=10) == 1


SETTINGS = SweepSettings(num_seeds=2, epochs=3, batch_size=32, learning_rates=(0.03,))


def test_grouping_from_a_small_memory_budget_gives_the_same_results(tmp_path, monkeypatch):
    workdir, _ = _store(str(tmp_path))
    labels = load_labels(workdir)
    reader = FeatureReader(workdir, "mean", labels)
    layers = list(range(LAYERS))
    args = (layers, labels.labels, labels.mask, labels.split, SETTINGS)
    asked = []

    def load(group):
        asked.append(list(group))
        return reader.layers(group)

    # Room for four layers' features: not all five at once, so two groups of at
    # most two layers (one training, the next being read): three groups.
    monkeypatch.setattr(
        devices, "available_memory", lambda: (int(4 * reader.layer_bytes / 0.6) + 1, "test")
    )
    grouped = run_streaming_sweep(load, *args, layer_bytes=reader.layer_bytes)
    assert asked == [[0, 1], [2, 3], [4]]
    whole = run_sweep(reader.layers(layers), *args[1:])
    for name in ("kernel", "bias", "train_loss", "val_loss", "best_epoch", "mean", "scale"):
        np.testing.assert_array_equal(getattr(grouped, name), getattr(whole, name), err_msg=name)
    for split in whole.logits:
        np.testing.assert_array_equal(grouped.logits[split], whole.logits[split])


def test_layer_groups_take_ordinary_pages_and_one_group_huge_pages(tmp_path, monkeypatch):
    """Huge pages cost compaction where groups fill the memory (run_streaming_sweep)."""
    workdir, _ = _store(str(tmp_path))
    labels = load_labels(workdir)
    reader = FeatureReader(workdir, "mean", labels)
    args = (list(range(LAYERS)), labels.labels, labels.mask, labels.split, SETTINGS)
    asked = []
    allocate = devices._aligned_empty

    def recorded(shape, dtype, alignment=64, huge_pages=True):
        asked.append(huge_pages)
        return allocate(shape, dtype, alignment, huge_pages)

    monkeypatch.setattr(devices, "_aligned_empty", recorded)
    run_streaming_sweep(reader.layers, *args, layer_bytes=reader.layer_bytes)
    assert asked and all(asked)  # all five layers in one group
    asked.clear()
    monkeypatch.setattr(
        devices, "available_memory", lambda: (int(4 * reader.layer_bytes / 0.6) + 1, "test")
    )
    run_streaming_sweep(reader.layers, *args, layer_bytes=reader.layer_bytes)
    assert asked and not any(asked)  # three groups


def test_the_next_group_is_read_while_one_trains_and_no_sooner(tmp_path, monkeypatch):
    """Group k + 1's rows are read during group k's training; group k + 2's only after it."""
    workdir, _ = _store(str(tmp_path))
    labels = load_labels(workdir)
    reader = FeatureReader(workdir, "mean", labels)
    events, read = [], {}
    train = sweep_module.run_sweep

    class Recorded:
        """reader.layers(group), recording when its rows are read (on the reading thread)."""

        def __init__(self, group):
            self.group, self.source = tuple(group), reader.layers(group)
            self.num_layers, self.num_rows = self.source.num_layers, self.source.num_rows
            self.dim, self.dtype = self.source.dim, self.source.dtype

        def fill(self, out, positions):
            events.append(("read", self.group))
            self.source.fill(out, positions)
            read.setdefault(self.group, threading.Event()).set()

    def training(features, *args, layer_ids, **kwargs):
        group = tuple(layer_ids)
        events.append(("train", group))
        following = {(0, 1): (2, 3), (2, 3): (4,)}.get(group)
        if following:  # the next group's rows are read while this one trains
            assert read.setdefault(following, threading.Event()).wait(60), following
        result = train(features, *args, layer_ids=layer_ids, **kwargs)
        events.append(("trained", group))
        return result

    monkeypatch.setattr(sweep_module, "run_sweep", training)
    settings = dataclasses.replace(SETTINGS, layer_group_size=2)
    run_streaming_sweep(Recorded, range(LAYERS), labels.labels, labels.mask, labels.split, settings)
    at = {event: events.index(event) for event in events}
    # Each group read once (with the mesh, once per device's share of its layers).
    assert {group for kind, group in events if kind == "read"} == {(0, 1), (2, 3), (4,)}
    first = {event: index for index, event in reversed(list(enumerate(events)))}
    # Reading (2, 3) started before (0, 1) finished training (the wait above
    # proves it overlapped); (4,) not before (0, 1) was done: two groups at most.
    assert first["read", (2, 3)] < at["trained", (0, 1)] < first["read", (4,)]
    assert at["trained", (0, 1)] < at["train", (2, 3)] < at["trained", (2, 3)] < at["train", (4,)]


def test_a_bad_value_in_a_group_read_ahead_stops_the_sweep_naming_it(tmp_path):
    """The reading thread's error reaches the caller, with the reader's own message."""
    workdir, _ = _store(str(tmp_path))
    workdir.open_array(features_array("mean"))[21, 4, 0].write(np.nan).result()
    labels = load_labels(workdir)
    reader = FeatureReader(workdir, "mean", labels)
    settings = dataclasses.replace(SETTINGS, layer_group_size=2)
    with pytest.raises(FeatureError, match=r"layer\(s\) 4 hold NaN or Inf in rows 21;"):
        run_streaming_sweep(
            reader.layers, range(LAYERS), labels.labels, labels.mask, labels.split, settings
        )


def test_integrity_check_features_still_agrees_with_the_reader(tmp_path):
    workdir, _ = _store(str(tmp_path))
    workdir.open_array(features_array("mean"))[11, 1, 0].write(np.inf).result()
    with pytest.raises(FeatureError, match=r"layer\(s\) 1 hold NaN or Inf in rows 11;"):
        integrity.check_features(workdir, "mean")
    with pytest.raises(FeatureError, match=r"layer\(s\) 1 hold NaN or Inf in rows 11;"):
        FeatureReader(workdir, "mean", load_labels(workdir)).read_into(
            np.empty((ROWS, LAYERS, DIM), np.float16), range(LAYERS)
        )


def test_big_feature_buffers_are_mapped_aligned_and_adopted_without_a_copy():
    import jax

    shape = (1024, 2, devices._POPULATE_MIN_BYTES // (1024 * 2 * 2))
    buffer = devices._aligned_empty(shape, np.float16)
    assert buffer.shape == shape and buffer.flags.c_contiguous and buffer.flags.writeable
    assert buffer.ctypes.data % 64 == 0
    buffer[:] = 1.5
    placed = jax.device_put(buffer)
    if jax.default_backend() == "cpu":
        assert placed.unsafe_buffer_pointer() == buffer.ctypes.data
    assert float(placed[-1, -1, -1]) == 1.5


def _huge_page_bytes(address: int) -> int | None:
    """AnonHugePages of the mapping holding `address` (/proc/self/smaps), None off Linux."""
    try:
        with open("/proc/self/smaps") as smaps:
            lines = smaps.read().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split()[0]
        if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
            start, end = (int(bound, 16) for bound in head.split("-"))
            inside = start <= address < end
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1]) * 1024
    return None


def test_big_feature_buffers_are_backed_by_huge_pages_where_linux_offers_them():
    """The sweep reads feature rows at random: 2 MB pages spare it a TLB miss per row."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as policy:
            policy_text = policy.read()
    except OSError:
        policy_text = "[never]"
    offered = "[never]" not in policy_text
    if not offered:
        pytest.skip("no transparent huge pages on this machine")
    shape = (4 * devices._POPULATE_MIN_BYTES // 4096, 1024, 2)
    buffer = devices._aligned_empty(shape, np.float16)
    assert buffer.ctypes.data % devices._HUGE_PAGE == 0
    buffer[:] = 0.5
    huge = _huge_page_bytes(buffer.ctypes.data)
    if huge is None:
        pytest.skip("/proc/self/smaps does not say")
    # Most of it: the kernel may fall short of free 2 MB pages on a busy machine.
    assert huge >= buffer.nbytes // 2, f"{huge} of {buffer.nbytes} bytes on huge pages"
    if "[madvise]" in policy_text:  # only asked-for mappings get them
        ordinary = devices._aligned_empty(shape, np.float16, huge_pages=False)
        ordinary[:] = 0.5
        assert _huge_page_bytes(ordinary.ctypes.data) == 0


def test_layer_groups_of_one_shape_compile_once(tmp_path, monkeypatch):
    """Groups whose padded shapes agree reuse the compiled programs (devices._lower)."""
    workdir, _ = _store(str(tmp_path))
    labels = load_labels(workdir)
    reader = FeatureReader(workdir, "mean", labels)
    monkeypatch.setattr(devices, "_compiled", {})
    lowered = []
    lower_program = devices._lower

    def counting(program, *like):
        cached = {id(compiled) for compiled in devices._compiled.values()}
        compile_program = lower_program(program, *like)

        def compiling():
            compiled = compile_program()
            lowered.append(id(compiled) not in cached)
            return compiled

        return compiling

    monkeypatch.setattr(programs_module, "_lower", counting)
    args = (labels.labels, labels.mask, labels.split)
    settings = dataclasses.replace(SETTINGS, layer_group_size=2)
    grouped = run_streaming_sweep(reader.layers, range(4), *args, settings)
    # Four programs (statistics, train, select, apply) compiled per group's shapes
    # ((0, 1) and (2, 3) agree): 4, not 8.
    assert len(lowered) == 8 and sum(lowered) == 4, lowered
    whole = run_sweep(reader.layers(range(4)), *args, SETTINGS)
    np.testing.assert_array_equal(grouped.kernel, whole.kernel)
    np.testing.assert_array_equal(grouped.logits["test"], whole.logits["test"])
