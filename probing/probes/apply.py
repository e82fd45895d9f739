"""Applying a saved probe (probes/<run>/weights.npz) to features, without JAX.

A probe of layer l is the standardisation of that layer's train features
followed by a dense layer (WORKSPACE.md, "weights.npz"):

    logits = ((x - mean[l]) / scale[l]) @ kernel[l, s] + bias[l, s]

for raw features x [n, D] of layer l, in the pooling the run was trained on
(today a run is named by its pooling: probes/<pooling>/). A logit > 0
predicts the positive class (binary) or the category (multilabel).
Evaluated in float64 and returned as float32, this reproduces the logits of
predictions.npz, which the JAX sweep computed in float32, to about 1e-6.

With folds (config.folds), weights.npz holds one probe per fold and pick one
with `fold=`; each fold's probe belongs to that fold's own split.
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np

from probing.store.atomic import verify_probe_dir
from probing.store.layout import PROBES_DIR, WEIGHTS_NPZ, probe_file, probes_dir
from probing.store.workdir import Workdir, WorkdirError

# Keys every weights.npz has; `folds` marks a fold axis after the layer.
REQUIRED_KEYS = ("kernel", "bias", "mean", "scale", "layers", "seeds", "label_names")


@dataclasses.dataclass(frozen=True)
class SavedProbes:
    """The probes of one run: every layer and seed (and fold), as weights.npz holds them.

    Attributes:
      kernel: [L, S, D, C], or [L, F, S, D, C] with folds.
      bias: [L, S, C], or [L, F, S, C].
      mean, scale: [L, D], or [L, F, D]: the train split's standardisation.
      layers: [L] layer index of each entry (a workdir layer, 0 = embeddings).
      seeds: [S] probe seeds.
      label_names: [C] (binary: the one positive class).
      folds: [F] fold indices, or None without folds.
      source: where they were read from, for messages.
    """

    kernel: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    layers: np.ndarray
    seeds: np.ndarray
    label_names: np.ndarray
    folds: np.ndarray | None
    source: str

    @property
    def binary(self) -> bool:
        return self.kernel.shape[-1] == 1

    def _index(self, values: np.ndarray, value: int, what: str, hint: str) -> int:
        found = np.flatnonzero(values == value)
        if found.size == 0:
            raise ValueError(
                f"{self.source}: no probe for {what} {value}; it holds {what}s "
                f"{values.tolist()}{hint}"
            )
        return int(found[0])

    def logits(
        self,
        features: np.ndarray,
        layer: int,
        seed: int | None = None,
        fold: int | None = None,
    ) -> np.ndarray:
        """Logits of the probe(s) of `layer` on raw `features`.

        Args:
          features: [n, D] features of `layer`, or [n, L+1, D] rows of a
            workdir's features/<pooling> (the layer is taken from them), in
            any float dtype (bfloat16 included).
          layer: the workdir layer index (not a position in `layers`).
          seed: a probe seed from `seeds`; None gives every seed.
          fold: with folds, the fold whose probe to apply (required then).

        Returns:
          float32 [n] (binary) or [n, C] (multilabel); with seed=None an
          extra leading seed axis [S, ...], as predictions.npz's logits[l].
        """
        li = self._index(self.layers, int(layer), "layer", "")
        kernel, bias, mean, scale = self.kernel[li], self.bias[li], self.mean[li], self.scale[li]
        if self.folds is None:
            if fold is not None:
                raise ValueError(
                    f"{self.source}: fold={fold} given, but these probes have no folds"
                )
        else:
            if fold is None:
                raise ValueError(
                    f"{self.source}: trained with {len(self.folds)} folds, one probe per fold; "
                    f"pass fold= one of {self.folds.tolist()}"
                )
            fi = self._index(self.folds, int(fold), "fold", "")
            kernel, bias, mean, scale = kernel[fi], bias[fi], mean[fi], scale[fi]
        x = np.asarray(features)
        if x.ndim == 3:
            x = x[:, int(layer)]
        if x.ndim != 2 or x.shape[1] != mean.shape[-1]:
            raise ValueError(
                f"features of shape {np.shape(features)}: expected [n, {mean.shape[-1]}] "
                f"(one layer) or [n, L+1, {mean.shape[-1]}] (a workdir's feature rows)"
            )
        standardized = (x.astype(np.float64) - mean) / scale
        if seed is None:
            out = np.einsum("nd,sdc->snc", standardized, kernel.astype(np.float64)) + bias[:, None]
        else:
            si = self._index(self.seeds, int(seed), "seed", "")
            out = standardized @ kernel[si].astype(np.float64) + bias[si]
        out = out.astype(np.float32)
        return out[..., 0] if self.binary else out


def load_probes(workdir: Workdir | str, run: str) -> SavedProbes:
    """Reads probes/<run>/weights.npz (`run`: today the pooling name), checked against results.json.

    Raises:
      WorkdirError: no such run, or a weights.npz without the documented keys.
    """
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    name = probe_file(run, WEIGHTS_NPZ)
    source = f"{workdir.location}/{name}"
    if not workdir.exists(name):
        raise WorkdirError(
            f"{source} does not exist: no probes were trained for {run!r}; run "
            f"`python -m probing.train_all_layers --workdir={workdir.location}` first"
            + _runs_hint(workdir)
        )
    verify_probe_dir(workdir, probes_dir(run))
    with np.load(io.BytesIO(workdir.read_bytes(name)), allow_pickle=False) as npz:
        missing = [key for key in REQUIRED_KEYS if key not in npz.files]
        if missing:
            raise WorkdirError(
                f"{source} lacks key(s) {', '.join(missing)} (WORKSPACE.md, weights.npz)"
            )
        arrays = {key: npz[key] for key in (*REQUIRED_KEYS, "folds") if key in npz.files}
    return SavedProbes(
        kernel=arrays["kernel"],
        bias=arrays["bias"],
        mean=arrays["mean"],
        scale=arrays["scale"],
        layers=arrays["layers"],
        seeds=arrays["seeds"],
        label_names=arrays["label_names"],
        folds=arrays.get("folds"),
        source=source,
    )


def _runs_hint(workdir: Workdir) -> str:
    if not workdir.is_local:
        return ""
    folder = os.path.join(workdir.local_path, PROBES_DIR)
    runs = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return f" (it holds {', '.join(runs)})" if runs else ""


def apply_probe(
    workdir: Workdir | str,
    run: str,
    features: np.ndarray,
    layer: int,
    seed: int | None = None,
    fold: int | None = None,
) -> np.ndarray:
    """Logits of the saved probe (run, layer, seed[, fold]) on raw features.

    One-call form of `load_probes(workdir, run).logits(features, layer, seed, fold)`;
    load once and call `.logits` when applying many probes.
    """
    return load_probes(workdir, run).logits(features, layer, seed, fold)
