"""A saved probe applied to a new image + prompt, through the workdir's own extraction.

`Predictor(workdir, run)` loads the model the workdir was extracted with
(config.json's `model` section, through `probing.models.load_model`, so the
same checkpoint, dtype, random-init seed, prompt format and padding side),
computes the run's pooling at every layer for each (image, prompt) pair as
extraction does (`probing.extraction.single`), and applies the run's saved
probes (`probing.probes.apply`). On a workdir's own rows it reproduces the
logits of predictions.npz (tests/test_probes_predict.py).

Prompts are full prompts as examples.jsonl's `prompt` holds them: for a
caption task the task template filled with the caption
(`probing.tasks.templates.render_caption(manifest["prompt_template"], caption)`);
the chat template is the model's and is applied here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections
import numpy as np

from probing.probes.apply import SavedProbes, load_probes
from probing.probes.run_names import run_folders, run_pooling
from probing.store.layout import CONFIG_JSON, MANIFEST_JSON, SUMMARY_JSON, probe_file
from probing.store.workdir import Workdir, WorkdirError

# `layer=ALL_LAYERS` asks for every probed layer.
ALL_LAYERS = "all"


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Probe outputs for new rows, laid out like predictions.npz's `logits`.

    Attributes:
      logits: float32 [layers, seeds, n] (binary) or [layers, seeds, n, C].
      layers: [layers] workdir layer index of each entry.
      seeds: [seeds] probe seeds.
      label_names: binary: the positive class; multilabel: the C categories.
      run, pooling: the probe run applied and its pooling.
      features: [n, L+1, D] the pooled features (storage dtype) the probes read.
    """

    logits: np.ndarray
    layers: np.ndarray
    seeds: np.ndarray
    label_names: list[str]
    run: str
    pooling: str
    features: np.ndarray

    @property
    def probabilities(self) -> np.ndarray:
        """The sigmoid of `logits`: each probe's probability of the positive class / category."""
        return 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))


def pick_run(workdir: Workdir, run: str | None) -> str:
    """`run`, or the workdir's only probe run; one line naming the runs when it is ambiguous."""
    runs = run_folders(workdir)
    if run is not None:
        return run
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise WorkdirError(
            f"{workdir.location} holds no probe run; train one first: "
            f"python -m probing.train_all_layers --workdir={workdir.location}"
        )
    raise WorkdirError(
        f"{workdir.location} holds {len(runs)} probe runs ({', '.join(runs)}); pass run= one of them"
    )


def model_config(workdir: Workdir, device: str | None) -> ml_collections.ConfigDict:
    """The model section of the workdir's config.json over today's defaults (fields added since)."""
    from probing.models.loading import default_model_config

    if not workdir.exists(CONFIG_JSON):
        raise WorkdirError(
            f"{workdir.location} has no {CONFIG_JSON}: its model is unknown, so new rows "
            "cannot be extracted like its own; apply the probes to your features with "
            "probing.probes.apply instead"
        )
    config = default_model_config()
    config.update(workdir.read_json(CONFIG_JSON)["model"])
    if device is not None:
        config.device = device
    return config


def _load_model(workdir: Workdir, config: ml_collections.ConfigDict):
    from probing.models.loading import ModelLoadError, load_model

    try:
        return load_model(config)
    except (ModelLoadError, OSError) as e:
        raise WorkdirError(
            f"{workdir.location} was extracted with model {config.name!r}, which cannot be "
            f"loaded here: {e}"
        ) from e


class Predictor:
    """One workdir's model and one probe run, loaded once; call `predict` for new rows."""

    def __init__(self, workdir: Workdir | str, run: str | None = None, device: str | None = None):
        self.workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
        self.run = pick_run(self.workdir, run)
        self.probes: SavedProbes = load_probes(self.workdir, self.run)
        self.pooling = run_pooling(self.workdir, self.run)
        manifest = self.workdir.read_json(MANIFEST_JSON)
        self.feature_dtype = manifest["feature_dtype"]
        self.with_image = bool(manifest.get("with_image", True))
        config = model_config(self.workdir, device)
        self.batch_size = int(self.workdir.read_json(CONFIG_JSON)["extract"]["batch_size"])
        self.model, _, self.adapter = _load_model(self.workdir, config)

    def layers(self, layer: int | str | None) -> np.ndarray:
        """The layers to apply: the run's best (None), every probed one ("all"), or `layer`."""
        if layer == ALL_LAYERS:
            return self.probes.layers
        if layer is None:
            summary = probe_file(self.run, SUMMARY_JSON)
            if not self.workdir.exists(summary):
                raise WorkdirError(
                    f"{self.workdir.location}/{summary} does not exist, so the best layer is "
                    "unknown; pass layer= a layer index or 'all'"
                )
            return np.asarray([int(self.workdir.read_json(summary)["best_layer"]["layer"])])
        if isinstance(layer, str):
            raise ValueError(f"layer={layer!r}: pass a layer index, None (best) or 'all'")
        return np.asarray([int(layer)])

    def features(self, images, prompts: Sequence[str]) -> np.ndarray:
        """The run's pooling at every layer [n, L+1, D] for each (image, prompt) pair."""
        from probing.extraction.single import check_pairs, pooled_features

        check_pairs(images, prompts, self.with_image)
        return pooled_features(
            self.model,
            self.adapter,
            self.pooling,
            images,
            prompts,
            self.feature_dtype,
            self.batch_size,
        )

    def predict(
        self,
        images,
        prompts: Sequence[str],
        layer: int | str | None = None,
        seed: int | None = None,
        fold: int | None = None,
    ) -> Predictions:
        """Probe logits for new rows: one image (PIL or path; None if text-only) per prompt.

        `layer`: None = the run's best layer (summary.json), "all", or an index;
        `seed`: one probe seed, None = every seed; `fold`: with folds, whose probes.
        """
        layers = self.layers(layer)
        features = self.features(images, prompts)
        seeds = self.probes.seeds if seed is None else np.asarray([int(seed)])
        per_layer = []
        for index in layers:
            logits = self.probes.logits(features, int(index), seed, fold)
            per_layer.append(logits if seed is None else logits[None])
        return Predictions(
            logits=np.stack(per_layer),
            layers=layers,
            seeds=seeds,
            label_names=[str(name) for name in self.probes.label_names],
            run=self.run,
            pooling=self.pooling,
            features=features,
        )


def predict(
    workdir: Workdir | str,
    images,
    prompts: Sequence[str],
    run: str | None = None,
    layer: int | str | None = None,
    seed: int | None = None,
    fold: int | None = None,
    device: str | None = None,
) -> Predictions:
    """One-call form of `Predictor(workdir, run, device).predict(images, prompts, layer, seed, fold)`.

    Loads the model on every call; keep a `Predictor` to predict many times.
    """
    return Predictor(workdir, run, device).predict(images, prompts, layer, seed, fold)
