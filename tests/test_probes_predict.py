"""A saved probe applied to new images + prompts through extraction (issue 15, item 5).

probing.probes.predict loads the workdir's model as its extraction did, pools
each (image, prompt) pair at every layer and applies the saved probes; fed
the workdir's own test rows (images from the task's dataset, prompts from
examples.jsonl) it must reproduce predictions.npz at every layer and seed.
"""

from __future__ import annotations

import numpy as np
import pytest

from probing.api import predict
from probing.config_files import load_config
from probing.probes.predict import Predictor
from probing.store import layout
from probing.store.workdir import Workdir, WorkdirError

# One small extraction (60 images of the demo's world, its trained tiny Qwen2-VL)
# and a probe sweep: about 20 s on 2 CPUs.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def caption_workdir(tmp_path_factory, single_thread):
    from probing.extraction.runner import extract
    from probing.train_all_layers import train_workdir

    workdir = str(tmp_path_factory.mktemp("predict") / "caption")
    config = load_config("configs/demo.py:qwen2_vl,caption,trained")
    with config.unlocked():
        config.data.synthetic.num_images = 60
        config.task.split_sizes.val = 10
        config.task.split_sizes.test = 10
        config.extract.poolings = ("mean", "last")
    extract(config, workdir)
    probe_config = load_config("configs/probe.py")
    with probe_config.unlocked():
        probe_config.num_seeds = 2
        probe_config.epochs = 3
        probe_config.bootstrap_resamples = 0
    train_workdir(workdir, probe_config, poolings=["last"])
    return workdir, config


def _test_rows(workdir: str, config):
    """The workdir's test rows as a user would pass them: image files and prompt texts."""
    from probing.tasks import build_task

    predictions = np.load(f"{workdir}/probes/last/predictions.npz")
    examples = Workdir(workdir).read_jsonl(layout.EXAMPLES_JSONL)
    image_paths = build_task(config.data, config.task, config.seed).image_paths
    rows = predictions["rows"]
    images = [image_paths[int(examples[r]["image_id"])] for r in rows]
    prompts = [examples[r]["prompt"] for r in rows]
    return predictions, images, prompts


def test_predict_reproduces_predictions_at_every_layer(caption_workdir):
    workdir, config = caption_workdir
    predictions, images, prompts = _test_rows(workdir, config)
    out = Predictor(workdir).predict(images, prompts, layer="all")
    assert out.run == "last" and out.pooling == "last"
    np.testing.assert_array_equal(out.layers, predictions["layers"])
    np.testing.assert_array_equal(out.seeds, predictions["seeds"])
    assert out.logits.shape == predictions["logits"].shape
    np.testing.assert_allclose(out.logits, predictions["logits"], atol=1e-4, rtol=0)
    assert ((out.probabilities > 0.5) == (out.logits > 0)).all()


def test_api_predict_defaults_to_the_best_layer_and_takes_pil_images(caption_workdir):
    from PIL import Image

    workdir, config = caption_workdir
    predictions, images, prompts = _test_rows(workdir, config)
    best = Workdir(workdir).read_json("probes/last/summary.json")["best_layer"]["layer"]
    seed = int(predictions["seeds"][1])
    out = predict(workdir, [Image.open(p) for p in images[:3]], prompts[:3], seed=seed)
    assert out.layers.tolist() == [best] and out.seeds.tolist() == [seed]
    li = predictions["layers"].tolist().index(best)
    np.testing.assert_allclose(out.logits[0, 0], predictions["logits"][li, 1, :3], atol=1e-4)


def test_bad_input_is_one_clear_line(caption_workdir, tmp_path):
    workdir, config = caption_workdir
    _, images, prompts = _test_rows(workdir, config)
    predictor = Predictor(workdir)
    with pytest.raises(ValueError, match="2 images for 3 prompts"):
        predictor.predict(images[:2], prompts[:3])
    with pytest.raises(ValueError, match="got one image; wrap it in"):
        predictor.predict(images[0], prompts[:1])
    with pytest.raises(ValueError, match="rows carry images"):
        predictor.predict(None, prompts[:1])
    with pytest.raises(ValueError, match=r"images\[0\]: cannot read .*missing.png"):
        predictor.predict([str(tmp_path / "missing.png")], prompts[:1])
    with pytest.raises(WorkdirError, match="pass run= one of them"):
        # A second run makes the default ambiguous.
        import shutil

        copy = str(tmp_path / "two_runs")
        shutil.copytree(workdir, copy)
        shutil.copytree(f"{copy}/probes/last", f"{copy}/probes/last-again")
        Predictor(copy)


def test_a_model_that_cannot_be_loaded_is_refused_in_one_line(caption_workdir, tmp_path):
    import json
    import shutil

    workdir, _ = caption_workdir
    copy = str(tmp_path / "moved_model")
    shutil.copytree(workdir, copy)
    with open(f"{copy}/config.json") as f:
        config = json.load(f)
    config["model"]["name"] = str(tmp_path / "no_such_checkpoint")
    with open(f"{copy}/config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(
        WorkdirError, match=r"was extracted with model .*no_such_checkpoint.*cannot be loaded here"
    ):
        Predictor(copy)
