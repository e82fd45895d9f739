"""Blind baselines from the prompt text alone: how much of a task the prompt gives away.

A probe on hidden states can score well because the image reached them, or
because the prompt already tells the answer. These baselines read only what a
row's prompt varies with, from examples.jsonl (no second extraction):

* category tasks: the categories the prompt lists (Tao's WithCat names the
  image's other categories; a positive row always lists an incomplete set,
  an empty list always means the target is the image's only category), as a
  multi-hot vector; NoCat prompts list nothing, so their baseline is the
  class prior;
* caption tasks: the caption's words (bag of words), for hard negatives whose
  wording or reuse can give them away.

One logistic regression per label column (scikit-learn, L2, C=1) is fitted on
the train rows and scored on the test rows with the probes' own metric
functions, so the numbers sit on the probes' axes. A model run without the
image (`task.blind=text_only`) measures something else, the model's language
prior, and costs a second extraction.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from probing.probes.metrics import binary_metrics, multilabel_metrics
from probing.store.layout import EXAMPLES_JSONL, SCORING_SPLIT
from probing.store.workdir import Workdir

# What each baseline reads, as its report label says it.
LISTED_CATEGORIES = "prompt's listed categories"
CAPTION_WORDS = "caption words"


@dataclasses.dataclass(frozen=True)
class PromptBaseline:
    """Test-split scores of a prompt-text-only classifier."""

    reads: str  # LISTED_CATEGORIES or CAPTION_WORDS
    metrics: dict[str, float]  # the probes' metric names (accuracy / macro_f1, roc_auc, ...)
    num_train: int
    num_test: int


def _fit_logits(train_x, train_y, test_x) -> np.ndarray:
    """Test logits of a logistic regression; a constant prior logit if train has one class."""
    from sklearn.linear_model import LogisticRegression  # imported here: slow to import

    train_y = np.asarray(train_y, dtype=np.int64)
    if len(np.unique(train_y)) < 2:
        prior = np.clip(train_y.mean() if len(train_y) else 0.5, 1e-3, 1 - 1e-3)
        return np.full(test_x.shape[0], np.log(prior / (1 - prior)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny or separable data
        model = LogisticRegression(C=1.0, max_iter=1000).fit(train_x, train_y)
    return model.decision_function(test_x)


def category_baseline(
    examples: Sequence[dict[str, Any]], label_names: Sequence[str]
) -> PromptBaseline:
    """Per column, a classifier of the scored rows from the multi-hot listed categories."""
    listed_names = sorted({n for e in examples for n in e.get("listed") or []} | set(label_names))
    column_of = {name: k for k, name in enumerate(listed_names)}
    features = np.zeros((len(examples), len(listed_names)), dtype=np.float64)
    labels = np.zeros((len(examples), len(label_names)), dtype=np.int64)
    mask = np.zeros_like(labels)
    index = {name: k for k, name in enumerate(label_names)}
    for row, example in enumerate(examples):
        for name in example.get("listed") or []:
            features[row, column_of[name]] = 1.0
        for name in example.get("candidates", []):
            mask[row, index[name]] = 1
        for name in example.get("positives", []):
            labels[row, index[name]] = 1
    split = np.asarray([e["split"] for e in examples])
    train, test = split == "train", split == SCORING_SPLIT
    logits = np.zeros((int(test.sum()), len(label_names)))
    for k in range(len(label_names)):
        rows = train & (mask[:, k] == 1)
        logits[:, k] = _fit_logits(features[rows], labels[rows, k], features[test])
    metrics = multilabel_metrics(logits, labels[test], mask[test], list(label_names))
    return PromptBaseline(LISTED_CATEGORIES, metrics, int(train.sum()), int(test.sum()))


def caption_baseline(examples: Sequence[dict[str, Any]]) -> PromptBaseline:
    """A classifier of caption rows from the caption's words alone."""
    from sklearn.feature_extraction.text import CountVectorizer

    split = np.asarray([e["split"] for e in examples])
    train, test = split == "train", split == SCORING_SPLIT
    texts = [str(e["caption"]) for e in examples]
    labels = np.asarray([int(e["label"]) for e in examples])
    vectorizer = CountVectorizer(binary=True, lowercase=True)
    train_x = vectorizer.fit_transform([t for t, keep in zip(texts, train, strict=True) if keep])
    test_x = vectorizer.transform([t for t, keep in zip(texts, test, strict=True) if keep])
    logits = _fit_logits(train_x, labels[train], test_x)
    metrics = binary_metrics(logits, labels[test])
    return PromptBaseline(CAPTION_WORDS, metrics, int(train.sum()), int(test.sum()))


def prompt_baseline(location: str, manifest: dict[str, Any]) -> PromptBaseline | None:
    """The prompt-text baseline of a workdir's task, or None when it cannot be built.

    None when examples.jsonl is missing, lacks what the baseline reads, or
    the train or test split is empty.
    """
    workdir = Workdir(location)
    if not workdir.exists(EXAMPLES_JSONL):
        return None
    examples = workdir.read_jsonl(EXAMPLES_JSONL)
    splits = {e.get("split") for e in examples}
    if not examples or not {"train", SCORING_SPLIT} <= splits:
        return None
    if manifest.get("label_kind") == "binary":
        if not all("label" in e and e.get("caption") for e in examples):
            return None
        try:
            return caption_baseline(examples)
        except ValueError:  # no word in any train caption (scikit-learn's empty vocabulary)
            return None
    if not all("candidates" in e and "positives" in e for e in examples):
        return None
    return category_baseline(examples, [str(n) for n in manifest.get("label_names", [])])
