"""End-to-end tests of `build_report` and `python -m probing.report`.

The workdirs are fabricated by hand from the WORKSPACE.md schema
(probing.testing.probed), so these tests need no model and no trainer.
"""

from __future__ import annotations

import csv
import os
import pathlib
import re
import subprocess
import sys

import pytest

from probing.reporting.builder import build_report
from probing.reporting.runs import ReportError
from probing.testing.probed import write_probed_workdir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory):
    """Two models x two tasks; Qwen with two poolings and first tokens."""
    root = tmp_path_factory.mktemp("workdirs")
    workdirs = []
    for model_id, num_layers in (("Qwen/Qwen2-VL-2B-Instruct", 9), ("/ckpt/tiny:fast_vlm", 5)):
        for task in ("caption", "category"):
            qwen = model_id.startswith("Qwen")
            location = str(root / f"{os.path.basename(model_id)}_{task}")
            write_probed_workdir(
                location,
                model_id=model_id,
                task=task,
                num_layers=num_layers,
                poolings=("mean", "last") if qwen else ("mean",),
                with_first_tokens=qwen and task == "caption",
            )
            workdirs.append(location)
    out_dir = str(root / "report")
    report = build_report(workdirs, out_dir, layers=[1])
    return workdirs, out_dir, report


@pytest.mark.slow
def test_every_figure_and_table_is_produced(two_by_two):
    _, out_dir, report = two_by_two
    assert report == os.path.join(out_dir, "report.md")
    figures = set(os.listdir(os.path.join(out_dir, "figures")))
    for task in ("caption", "category"):
        for stem in ("headline_per_layer", "precision_recall_f1", "loss_curves"):
            assert {f"{task}_{stem}.png", f"{task}_{stem}.svg"} <= figures
        assert f"{task}_pooling_comparison.png" in figures  # Qwen has mean and last.
    category_heatmaps = [
        f for f in figures if f.startswith("category_category_f1") and f.endswith(".png")
    ]
    # One figure, with Qwen mean, Qwen last and FastVLM mean as its panels.
    assert category_heatmaps == ["category_category_f1.png"]
    markdown = pathlib.Path(report).read_text()
    for figure in figures:
        if figure.endswith(".png"):
            assert f"(figures/{figure})" in markdown
    assert "## First generated tokens" in markdown and "positive (n=" in markdown
    assert "### Task caption" in markdown and "### Task category" in markdown
    assert "python -m probing.report --workdirs=" in markdown
    with open(os.path.join(out_dir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6  # 2 runs of each Qwen workdir + 1 of each FastVLM one.
    assert {row["model"] for row in rows} == {"Qwen2-VL-2B-Instruct", "tiny:fast_vlm"}
    assert os.path.exists(os.path.join(out_dir, "first_tokens_Qwen2-VL-2B-Instruct_caption.csv"))


@pytest.mark.slow
def test_legends_name_model_and_pooling(two_by_two):
    _, out_dir, _ = two_by_two
    # SVG text stays text (svg.fonttype none), so legend entries can be read back.
    svg = pathlib.Path(out_dir, "figures", "caption_headline_per_layer.svg").read_text()
    for label in (
        "Qwen2-VL-2B-Instruct · mean",
        "Qwen2-VL-2B-Instruct · last",
        "tiny:fast_vlm · mean",
    ):
        assert label in svg
    assert "relative depth" in svg and "shuffled-label control" in svg


@pytest.mark.slow
def test_html_is_self_contained(two_by_two):
    _, out_dir, _ = two_by_two
    page = pathlib.Path(out_dir, "report.html").read_text()
    sources = re.findall(r"""src\s*=\s*["']([^"']*)""", page, flags=re.IGNORECASE)
    assert len(sources) == 9  # every PNG of the report, embedded
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    # Links (each figure's PNG and SVG, results.csv) are relative and lead to the files.
    links = re.findall(r"""href\s*=\s*["']([^"']*)""", page, flags=re.IGNORECASE)
    assert len(links) == 2 * 9 + 1 and "results.csv" in links
    assert all(pathlib.Path(out_dir, link).is_file() for link in links)
    assert not re.search(r"https?://|file://|url\(", page)
    assert "<link" not in page and "<script" not in page


@pytest.mark.slow
def test_report_over_one_workdir_and_cli(tmp_path):
    location = str(tmp_path / "only")
    write_probed_workdir(location, task="category", num_layers=4, num_seeds=2)
    out_dir = str(tmp_path / "out")
    result = subprocess.run(
        [sys.executable, "-m", "probing.report", f"--workdirs={location}", f"--out={out_dir}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": REPO_ROOT, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == os.path.join(out_dir, "report.md")
    figures = os.listdir(os.path.join(out_dir, "figures"))
    assert "category_headline_per_layer.png" in figures
    assert not any("pooling_comparison" in f for f in figures)  # one pooling only
    assert "First generated tokens" not in pathlib.Path(result.stdout.strip()).read_text()


def test_baseline_runs_are_labelled(tmp_path):
    workdirs = [str(tmp_path / name) for name in ("trained", "untrained", "blind")]
    write_probed_workdir(workdirs[0], num_layers=3, model_id="tiny:qwen2_vl")
    write_probed_workdir(workdirs[1], num_layers=3, model_id="tiny:qwen2_vl", random_init=True)
    write_probed_workdir(workdirs[2], num_layers=3, model_id="tiny:qwen2_vl", blind="text_only")
    out_dir = str(tmp_path / "out")
    build_report(workdirs, out_dir)
    svg = pathlib.Path(out_dir, "figures", "caption_headline_per_layer.svg").read_text()
    for label in (
        "tiny:qwen2_vl · mean",
        "tiny:qwen2_vl (untrained) · mean",
        "tiny:qwen2_vl (text only) · mean",
        "strongest trivial baseline (always-positive)",
        "layer not above the strongest baseline",
        "95% CI: cluster bootstrap over test images",
    ):
        assert label in svg


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ReportError, match="no workdirs given"):
        build_report([], str(tmp_path / "out"))
    unprobed = tmp_path / "unprobed"
    write_probed_workdir(str(unprobed), num_layers=3)
    os.remove(unprobed / "probes" / "mean" / "metrics.csv")
    with pytest.raises(
        ReportError, match=r"python -m probing.train_all_layers --workdir=.*unprobed"
    ):
        build_report([str(unprobed)], str(tmp_path / "out"))
    with pytest.raises(ReportError, match=r"no manifest\.json"):
        build_report([str(tmp_path)], str(tmp_path / "out"))
    probed = str(tmp_path / "probed")
    write_probed_workdir(probed, num_layers=3)
    with pytest.raises(ReportError, match="matches no probe results"):
        build_report([probed], str(tmp_path / "out"), tasks=["category"])
    with pytest.raises(ReportError, match="matches no probe results"):
        build_report([probed], str(tmp_path / "out"), poolings=["max"])


def test_one_task_with_two_label_kinds_is_refused(tmp_path):
    binary = str(tmp_path / "binary")
    multilabel = str(tmp_path / "multilabel")
    write_probed_workdir(binary, num_layers=3)
    write_probed_workdir(multilabel, task="category", num_layers=3)
    manifest = pathlib.Path(multilabel, "manifest.json")
    manifest.write_text(manifest.read_text().replace('"task": "category"', '"task": "caption"'))
    with pytest.raises(ReportError, match="different label kinds"):
        build_report([binary, multilabel], str(tmp_path / "out"))


def test_short_table_rows_are_padded_to_the_header(tmp_path):
    from probing.reporting import document

    table = document.Table(header=["run", "peak", "answer"], rows=[["a", "1", "2"], ["b", "3"]])
    page = document.to_html([table], "t")
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    assert [len(re.findall(r"<t[hd]>", row)) for row in rows] == [3, 3, 3]
    markdown = document.to_markdown([table], str(tmp_path)).splitlines()
    assert markdown[3] == "| b | 3 |  |"


def test_html_figures_show_at_their_print_size(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probing.reporting import document

    blocks = []
    for name, inches in (("page", 7.0), ("column", 3.4)):
        fig = plt.figure(figsize=(inches, 2))
        fig.savefig(tmp_path / f"{name}.png", dpi=document.FIGURE_DPI)
        plt.close(fig)
        blocks.append(document.Figure(str(tmp_path / f"{name}.png"), "", name))
    widths = re.findall(r'<img src="data:[^"]*" width="(\d+)"', document.to_html(blocks, "t"))
    # Same scale for both: a column-width figure is shown at 3.4/7 of a page-width one.
    assert [int(w) for w in widths] == [
        round(7.0 * document.PAGE_SCALE_PX_PER_IN),
        round(3.4 * document.PAGE_SCALE_PX_PER_IN),
    ]


def test_environment_shares_common_rows_and_lines_up_the_rest(tmp_path):
    from probing.reporting.builder import _environment_blocks
    from probing.reporting.runs import load_runs

    locations = []
    for name in ("qwen", "fast"):
        locations.append(str(tmp_path / name))
        write_probed_workdir(locations[-1], model_id=f"tiny:{name}", poolings=("mean", "last"))
    shared, differing = _environment_blocks(load_runs(locations))
    shared_fields = [row[0] for row in shared.rows]
    assert "task" in shared_fields and "model id" not in shared_fields
    assert differing.header == ("field", "qwen", "fast")
    rows = {row[0]: row[1:] for row in differing.rows}
    assert rows["model id"] == ["tiny:qwen", "tiny:fast"]
    assert rows["workdir"] == locations
