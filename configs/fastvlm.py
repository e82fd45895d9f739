"""FastVLM-0.5B on real COCO (the 2025 study's second model, leakage-free tasks).

  python -m probing.extract --config=configs/fastvlm.py --workdir=runs/fastvlm_caption \
      --config.data.coco_root=/data/coco
  python -m probing.extract --config=configs/fastvlm.py:category --workdir=runs/fastvlm_category \
      --config.data.coco_root=/data/coco
  python -m probing.extract --config=configs/fastvlm.py:category,tao,withcat --workdir=runs/x_tao_withcat
  python -m probing.train_all_layers --workdir=runs/fastvlm_caption
  python -m probing.extract --config=configs/fastvlm.py:smoke --workdir=/tmp/fastvlm_smoke  # ~1 min, CPU

Arguments (comma-separated, any order): the task, caption (default) or
category; the construction, study2025 (default: the 2025 study's, one random
negative caption, 3 candidate categories, mean and last pooling) or tao (Tao et
al. 2024: 5 positives with hard negatives, all 80 categories, last-token
features); for categories nocat (default) or withcat; smoke swaps in the
tiny random checkpoint of the same architecture and a small generated
dataset. COCO 2017 is expected under coco_root as
annotations/{instances,captions}_train2017.json and train2017/*.jpg; the model
is fetched from the hub on first use (or give a local directory as
--config.model.name).

Expected runtime on one H100 (bf16, batch 16): 24,000 images → 48,000 caption
rows (or 24,000 category rows) of about 300 tokens each (FastViT emits 256 image tokens at 1024 px); at the ≥100 rows/s
the extraction engine targets that is roughly 8 minutes (4 for category).
The tao setup has 10 rows per image (5 positives, 5 hard negatives) but
shares each image's prefix across them. This is an estimate, not yet
measured on a GPU.
"""

from probing.extraction.config import (
    PAPER_SETUPS,
    apply_paper_setup,
    extraction_config,
    make_smoke,
    parse_config_arg,
)


def get_config(arg=None):
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
    # FastVLM-0.5B converted to transformers' native fast_vlm format (Apple's
    # apple/FastVLM-0.5B repository needs trust_remote_code and is not this class).
    config.model.name = "KamilaMila/FastVLM-0.5B"
    # Pin a hub commit for reproducibility; "main" is recorded as given.
    config.model.revision = "main"
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
    config.extract.num_workers = 8
    if args["smoke"]:
        make_smoke(config, "fast_vlm")
    return config
