"""The extraction config: data, task, model and extraction settings in one tree.

Config files in configs/ start from `extraction_config()` and change what
their run needs; every field is documented where it is defined (the data and
task fields in probing.data / probing.tasks, the model fields in
probing.models).
"""

from __future__ import annotations

import os

import ml_collections

from probing.models import default_model_config
from probing.tasks import default_data_config, default_task_config


def extract_settings() -> ml_collections.ConfigDict:
    """How stage 1 runs: batching, poolings, storage dtype, logging."""
    config = ml_collections.ConfigDict()
    # Rows per forward pass; also the row size of a feature chunk, so that
    # parallel writers (torchrun ranks) never share a chunk.
    config.batch_size = 8
    # Poolings written in one pass, each to features/<name>: mean, max, last,
    # last_prompt, first, index:K, image_mean, text_mean (see
    # probing.extraction.pooling; "last" under the chat prompt format is the
    # template's last token, last_prompt the prompt's).
    config.poolings = ("mean", "last")
    # Storage dtype of features/*: float32, float16 or bfloat16. float16 halves
    # the store; probes standardise per layer, so its precision suffices.
    config.feature_dtype = "float32"
    # DataLoader worker processes that decode and preprocess images; 0 does it
    # in-process.
    config.num_workers = 0
    # CPU threads torch may use (torch.set_num_threads); 0 keeps torch's
    # default. Tiny models on a few cores run several times faster with 1,
    # because thread start-up costs more than their small matrix products.
    config.torch_threads = 0
    # Chunks (of batch_size rows) sorted together by prompt length before
    # being cut into forward batches, which cuts padding. Windows are fixed,
    # so results do not depend on resumes or ranks; 1 disables bucketing.
    config.bucket_window = 4
    # Run the prompt prefix shared by the rows of one image (system turn,
    # image, common prompt words) once and every row's continuation against
    # its KV cache: several times fewer tokens with many prompts per image
    # (Tao et al.: 10 captions per image). Equal to the unshared path within
    # the batch-invariance tolerance; needs processor-side image expansion.
    config.prefix_sharing = False
    # k > 0 records the top-k next tokens and probabilities at the last
    # prompt position of every row (Tao et al.'s first-token table) in
    # examples.jsonl as "first_token_topk": [[token, prob], ...].
    config.first_token_topk = 0
    # True: rows whose image cannot be decoded or that the processor rejects
    # are skipped (arrays/rejected = 1, reasons in rejected_rows.jsonl, counted
    # in manifest num_rejected_rows). False: the first such row stops the run.
    config.skip_rejected_images = False
    # Seconds between progress lines.
    config.log_every_s = 10.0
    return config


def extraction_config() -> ml_collections.ConfigDict:
    """Defaults for every extraction field; configs/*.py override some."""
    config = ml_collections.ConfigDict()
    # One seed for everything random in stage 1: splits, negative captions,
    # candidate categories, prompt shuffles.
    config.seed = 0
    config.data = default_data_config()
    config.task = default_task_config()
    config.model = default_model_config()
    config.extract = extract_settings()
    # Replace the features of an existing workdir written with a different
    # configuration or from different inputs instead of refusing it (a matching
    # workdir is always resumed). Only what extraction wrote is replaced; while
    # the workdir also holds probes/, report/ or other files, it is refused.
    config.overwrite = False
    return config


def parse_config_arg(arg: str | None, choices: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Parses a config-file argument like "category,smoke".

    `choices` maps a slot name to its allowed words, the first being the
    default, e.g. {"task": ("caption", "category"), "smoke": ("", "smoke")}.
    Each comma-separated word fills the slot that allows it.
    """
    picked = {slot: words[0] for slot, words in choices.items()}
    for word in filter(None, (arg or "").split(",")):
        slots = [slot for slot, words in choices.items() if word in words]
        if not slots:
            allowed = sorted({w for words in choices.values() for w in words if w})
            raise ValueError(f"config argument {word!r} is not one of {', '.join(allowed)}")
        picked[slots[0]] = word
    return picked


def make_smoke(config: ml_collections.ConfigDict, family: str) -> None:
    """Turns a real-model config into its CPU smoke variant, in place.

    The tiny checkpoint of the same architecture trained on the generated
    world (`trained:<family>`; the random `tiny:<family>` for a family without
    one) replaces the hub model and a small generated COCO-format dataset
    replaces COCO; everything else (task, prompt, poolings) is kept, so the
    smoke run exercises the same code, on a model whose probes find something.
    """
    from probing.models.trained import trained_families

    prefix = "trained" if family in trained_families() else "tiny"
    config.model.name = f"{prefix}:{family}"
    config.model.dtype = "float32"
    config.model.attn_implementation = None
    config.model.device = "cpu"
    config.data.source = "synthetic"
    config.data.coco_splits = "train2017"
    config.data.synthetic.num_images = 120
    config.task.split_sizes = ml_collections.ConfigDict({"train": -1, "val": 20, "test": 20})
    config.task.hard_negatives.embedding_model = "all-MiniLM-L6-v2"
    config.task.hard_negatives.device = "cpu"
    config.extract.batch_size = 16
    config.extract.feature_dtype = "float32"
    config.extract.num_workers = 0
    config.extract.torch_threads = 1


# The two published constructions, as config arguments ("study2025", "tao").
PAPER_SETUPS = ("study2025", "tao")


def apply_paper_setup(config: ml_collections.ConfigDict, setup: str, withcat: bool) -> None:
    """Sets the task, prompt-format and pooling fields of one paper's construction, in place.

    study2025 (the 2025 Qwen2-VL / FastVLM study): one positive and one random
      negative caption per image with "This image contains: {caption}.\nIs this
      right?"; 3 candidate categories per image (balanced) among its 40 object
      types (all categories on the generated dataset) with its singular object
      prompt "This image contains the following types of object:", NoCat by
      default (the list-of-categories variant it tried first is `withcat`);
      its models' chat template; mean pooling (its default), plus last and
      text_mean (mean over the text tokens only: the study's mean is mostly
      image tokens, which cannot depend on the prompt in a causal decoder).
      The paper does not state how its category labels or splits were made;
      ours come from instance annotations, splits grouped by image.
    tao (Tao et al. 2024): all 5 captions as positives, one hard negative each
      (the most similar of 5,000 captions sampled per positive, by
      all-mpnet-base-v2, never one true of the image), the prompt 'This image
      describes "{caption}". Is it right? Answer:'; all 80 categories as
      binary tasks scored by macro-F1 with the NoCat or (withcat) WithCat
      object prompt; last-token features. Tao probed base models with the raw
      prompt (image, then text, no chat template), so the model gets
      prompt_format "raw" and the last token is the prompt's own ("Answer:"
      or the list's final comma), the token whose continuation WithCat
      relies on; every family here renders raw prompts (PaliGemma's own
      format is raw anyway). Its 80 probes are trained as one K-output probe
      with one epoch choice for all categories (train_all_layers).
    """
    task = config.task
    if setup == "study2025":
        task.positives_per_image = 1
        task.negatives = "random"
        task.prompt = "study2025_caption" if task.kind == "caption" else "study2025_objects"
        task.category_form = "candidates"
        task.candidates_per_image = 3
        task.category_subset = "study2025"
        config.model.prompt_format = "chat"
        config.extract.poolings = ("mean", "last", "text_mean")
    elif setup == "tao":
        task.positives_per_image = 5
        task.negatives = "hard"
        task.hard_negatives.num_candidates = 5000
        task.hard_negatives.embedding_model = "all-mpnet-base-v2"
        task.prompt = "tao_caption" if task.kind == "caption" else "tao_objects"
        task.category_form = "all"
        task.category_subset = ""
        config.model.prompt_format = "raw"
        # Tao's 10 prompts per image share the image prefix: run it once.
        config.extract.prefix_sharing = True
        config.extract.poolings = ("last", "mean")
    else:
        raise ValueError(f"unknown paper setup {setup!r}; use one of {', '.join(PAPER_SETUPS)}")
    task.category_prompt = "withcat" if withcat else "nocat"


def coco_study_config(
    arg: str | None, model_name: str, family: str, revision: str
) -> ml_collections.ConfigDict:
    """A real-model COCO run of `model_name` (hub id or local directory).

    `arg` is the config-file argument (task, paper setup, nocat/withcat,
    smoke; see configs/qwen.py); `family` names the tiny checkpoint that the
    smoke variant swaps in for the same architecture; `revision` is the hub
    revision the config file pins (the manifest also records the commit that
    was actually loaded).
    """
    args = parse_config_arg(
        arg,
        {
            "task": ("caption", "category"),
            "setup": PAPER_SETUPS,
            "prompt": ("nocat", "withcat"),
            "smoke": ("", "smoke"),
        },
    )
    config = extraction_config()
    config.model.name = model_name
    config.model.revision = revision
    config.model.dtype = "bfloat16"
    config.model.attn_implementation = "sdpa"
    config.data.source = "coco"
    # Set on the command line: --config.data.coco_root=/path/to/coco
    config.data.coco_root = "data/coco"
    config.data.coco_splits = "train2017"
    # The 2025 study: 20,000 train / 2,000 eval images; we add a test split so
    # that the layer chosen on val is scored on unseen images.
    config.task.split_sizes.train = 20000
    config.task.split_sizes.val = 2000
    config.task.split_sizes.test = 2000
    config.task.kind = args["task"]
    # Labels always come from instance annotations (never caption words).
    apply_paper_setup(config, args["setup"], withcat=args["prompt"] == "withcat")
    config.extract.batch_size = 16
    config.extract.feature_dtype = "float16"
    # Image decoding workers: 8 keep a GPU fed on COCO JPEGs; fewer on a
    # small machine, where more processes than cores only add warnings.
    config.extract.num_workers = min(8, os.cpu_count() or 1)
    if args["smoke"]:
        make_smoke(config, family)
    return config
