"""Trains a tiny checkpoint of a real VLM architecture on the generated COCO world.

  python -m probing.models.train_tiny --family=qwen2_vl     # 5-10 min on 2 CPU cores
  python -m probing.models.train_tiny --family=fast_vlm --out=/tmp/fast_vlm

Writes the checkpoint (save_pretrained: weights, config, processor, tokenizer),
a model card README.md with its held-out scores and training.json to
``--out`` (default: the committed ``probing/models/trained/checkpoints/<family>``
that ``trained:<family>`` loads). Deterministic from ``--seed``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from absl import app, flags, logging

from probing.cli import run_main

_FAMILY = flags.DEFINE_string("family", None, "Family to train: qwen2_vl or fast_vlm.")
_OUT = flags.DEFINE_string("out", None, "Checkpoint directory (default: the committed one).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights and of every training draw.")
_STEPS_A = flags.DEFINE_integer("steps_a", None, "Vision-stage steps (default: the recipe's).")
_STEPS_B = flags.DEFINE_integer("steps_b", None, "Language-stage steps (default: the recipe's).")
_HELD_OUT = flags.DEFINE_integer("held_out_images", 500, "Held-out images scored for the card.")


def train_checkpoint(
    family_name: str,
    out_dir: str,
    seed: int = 0,
    steps_a: int | None = None,
    steps_b: int | None = None,
    held_out_images: int = 500,
) -> dict:
    """Trains ``family_name``, saves it to ``out_dir`` with its card; returns the record."""
    import torch

    from probing.models.loading import default_model_config, load_model
    from probing.models.trained import evaluate, world
    from probing.models.trained.card import write_card
    from probing.models.trained.families import family
    from probing.models.trained.train import TrainSettings, train_model

    spec = family(family_name)  # unknown names fail here, before any work
    settings = TrainSettings(
        seed=seed, steps_a=spec.steps_a if steps_a is None else steps_a, **spec.settings
    )
    if steps_b is not None:
        settings.steps_b = steps_b
    threads = torch.get_num_threads()
    # One thread: tiny matrices gain nothing from more, and results stay
    # bitwise reproducible whatever the machine's core count.
    torch.set_num_threads(1)
    try:
        model, processor, record = train_model(spec, settings)
        parent = os.path.dirname(os.path.abspath(out_dir))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{family_name}.", dir=parent)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        # Score what was saved, loaded the way every run loads a checkpoint.
        started = time.time()
        config = default_model_config()
        config.name, config.device = staging, "cpu"
        _, _, adapter = load_model(config)
        held_out = [world.scene(world.HELD_OUT_SPLIT_INDEX, i) for i in range(held_out_images)]
        scores = {
            "held_out_images": held_out_images,
            "caption_accuracy": round(evaluate.caption_accuracy(adapter, held_out, seed), 4),
            # Naming generates up to 24 tokens per image: the first 200 suffice.
            "naming_images": min(held_out_images, 200),
            **evaluate.naming_scores(adapter, held_out[:200]),
        }
        record["seconds"]["evaluation"] = round(time.time() - started, 1)
    finally:
        torch.set_num_threads(threads)
    text = model.config.get_text_config()
    record.update(
        family=family_name,
        architecture=type(model).__name__,
        decoder_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        parameters=sum(p.numel() for p in model.parameters()),
        scores=scores,
    )
    write_card(staging, family_name, record)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.rename(staging, out_dir)
    logging.info("trained:%s written to %s: %s", family_name, out_dir, scores)
    return record


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from probing.models.trained import checkpoint_dir
    from probing.models.trained.families import family, trainable_families

    if _FAMILY.value is None:
        raise app.UsageError(f"--family is required: one of {', '.join(trainable_families())}")
    family(_FAMILY.value)  # an unknown family is reported before anything runs
    out = _OUT.value or checkpoint_dir(_FAMILY.value)
    record = train_checkpoint(
        _FAMILY.value, out, _SEED.value, _STEPS_A.value, _STEPS_B.value, _HELD_OUT.value
    )
    seconds = sum(v for k, v in record["seconds"].items() if k != "evaluation")
    print(f"{out}: held-out {record['scores']} after {seconds / 60:.1f} min of training")


if __name__ == "__main__":
    run_main(main, "probing.models.train_tiny")
