"""The model's own yes/no answer: which tokens are read, how it is scored, and the report's use.

Known answers: margins built by hand against numpy's logsumexp; accuracies
against scikit-learn on rows whose answers are planted; the interval on pure
noise covers chance; a probed planted workdir whose report must quote exactly
the accuracy of the answers written into it. The extraction side (the
recorded answer equals an independent forward pass of the trained model) is
in tests/test_models_trained.py.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score

from probing.extraction.answers import answer_margins, answer_tokens_for, yes_no_tokens
from probing.reporting.behaviour import model_answer, score_answers
from probing.store.layout import ANSWER_MARGIN, MANIFEST_JSON, TEST


class _Tokenizer:
    """A word-level tokenizer with a fixed vocabulary; unknown words split into characters."""

    def __init__(self, vocab: list[str]):
        self.vocab = {word: i for i, word in enumerate(vocab)}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        if text in self.vocab:
            return {"input_ids": [self.vocab[text]]}
        return {"input_ids": [self.vocab.setdefault(c, len(self.vocab)) for c in text]}


def test_every_one_token_spelling_is_read():
    tokenizer = _Tokenizer(["Yes", " yes", "No", " no", "no"])
    tokens = yes_no_tokens(tokenizer)
    assert tokens.yes == (("Yes", 0), (" yes", 1))
    assert tokens.no == (("No", 2), ("no", 4), (" no", 3))
    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    expected = np.logaddexp(logits[:, 0], logits[:, 1]) - np.logaddexp.reduce(
        logits[:, [2, 4, 3]].numpy(), axis=1
    )
    np.testing.assert_allclose(answer_margins(logits, tokens).numpy(), expected, rtol=1e-6)


class _Unknown:
    """Every character is the unknown token 0."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [0] * len(text)}


def test_without_a_one_token_spelling_the_first_tokens_are_read():
    tokenizer = _Tokenizer([])  # every word split into characters
    tokens = yes_no_tokens(tokenizer)
    assert tokens.yes == (("Yes", tokenizer("Y")["input_ids"][0]),)
    assert tokens.no == (("No", tokenizer("N")["input_ids"][0]),)
    # Yes and No starting with the same token cannot be told apart: no answer.
    assert yes_no_tokens(_Unknown()) is None
    assert answer_tokens_for("category", _Tokenizer(["Yes", "No"])) is None
    assert answer_tokens_for("caption", _Tokenizer(["Yes", "No"])) is not None


def test_trained_tokenizer_reads_yes_and_no_as_the_evaluation_does():
    from transformers import AutoTokenizer

    from probing.models.trained import checkpoint_dir, world

    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir("qwen2_vl"))
    tokens = yes_no_tokens(tokenizer)
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (world.YES, world.NO)]
    assert (tokens.yes_ids, tokens.no_ids) == ([ids[0]], [ids[1]])


def test_score_of_planted_answers_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    right = rng.random(400) < 0.8
    # Magnitudes vary; only the sign is the answer.
    margins = np.where(right == (labels == 1), 1.0, -1.0) * rng.uniform(0.1, 5, 400)
    groups = np.arange(400) // 2
    answer = score_answers(margins, labels, groups)
    assert answer.accuracy == pytest.approx(accuracy_score(labels, margins > 0), abs=1e-6)
    assert answer.ci95[0] < answer.accuracy < answer.ci95[1]
    assert answer.num_images == 200 and answer.num_rows == 400
    perfect = score_answers(np.where(labels == 1, 2.0, -2.0), labels, groups)
    assert (perfect.accuracy, perfect.ci95) == (1.0, (1.0, 1.0))


def test_interval_of_answers_at_chance_covers_chance():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 2000)
    answer = score_answers(rng.normal(size=2000), labels, np.arange(2000) // 4)
    assert answer.ci95[0] < 0.5 < answer.ci95[1]
    assert answer.ci95[1] - answer.ci95[0] < 0.1


@pytest.fixture(scope="module")
def answered_workdir(tmp_path_factory):
    """A planted workdir with an answer array: wrong on a quarter of the images, and on
    another quarter of the test images only (so scoring other rows than the test
    split's gives another number)."""
    from configs.probe import get_config
    from probing.probes.train import train_workdir
    from probing.testing.planted import planted_arrays, write_workdir

    location = str(tmp_path_factory.mktemp("answered"))
    # Same shapes as tests/test_report_pairing.py, so the compiled sweep is reused.
    arrays = planted_arrays(300, 4, 8, [2], strength=5.0, seed=11)
    workdir = write_workdir(location, arrays)
    labels = arrays["labels"].astype(int)
    on_test = arrays["split"] == TEST
    wrong = (arrays["group"] % 4 == 0) | (on_test & (arrays["group"] % 4 == 1))
    margins = np.where((labels == 1) != wrong, 1.5, -0.5).astype(np.float32)
    workdir.write_array(ANSWER_MARGIN, margins)
    manifest = workdir.read_json(MANIFEST_JSON)
    manifest["answer_tokens"] = {"yes": [["Yes", 1]], "no": [["No", 2]]}
    workdir.write_json(MANIFEST_JSON, manifest)
    config = get_config()
    config.update(num_seeds=2, epochs=4, batch_size=16, learning_rate=3e-2)
    train_workdir(location, config)
    return location, accuracy_score(labels[on_test], margins[on_test] > 0)


def test_report_quotes_the_answer_on_the_probes_test_rows(answered_workdir, tmp_path):
    from probing.reporting import build_report
    from probing.reporting.runs import load_runs

    location, expected = answered_workdir
    assert 0.35 < expected < 0.65  # half the test images are answered wrong
    (run,) = load_runs([location])
    assert model_answer(run).accuracy == pytest.approx(expected, abs=1e-6)
    report = build_report([location], str(tmp_path / "report"))
    with open(os.path.join(tmp_path, "report", "results.csv")) as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["model_answer"]) == pytest.approx(expected, abs=1e-6)
    assert float(row["model_answer_ci_low"]) < expected < float(row["model_answer_ci_high"])
    # The paired difference is the best layer's test accuracy (metrics.csv, from
    # the same logits) minus the answer's; the planted signal beats the answer.
    difference = float(row["peak_minus_answer"])
    assert difference == pytest.approx(float(row["peak"]) - expected, abs=1e-6)
    low, high = float(row["peak_minus_answer_ci_low"]), float(row["peak_minus_answer_ci_high"])
    assert 0 < low < difference < high
    with open(report) as f:
        text = f.read()
    assert "model's answer" in text and f"{expected:.3f} [" in text
    assert f"peak − answer {difference:+.3f} [" in text


def test_no_answer_without_the_array(answered_workdir, tmp_path):
    import shutil

    from probing.reporting.runs import load_runs

    location, _ = answered_workdir
    copy = str(tmp_path / "copy")
    shutil.copytree(location, copy)
    shutil.rmtree(os.path.join(copy, ANSWER_MARGIN))
    (run,) = load_runs([copy])
    assert model_answer(run) is None
