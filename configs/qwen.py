"""Qwen2-VL-2B-Instruct on real COCO (the 2025 study's model, leakage-free tasks).

  python -m probing.extract --config=configs/qwen.py --workdir=runs/qwen2vl_caption \
      --config.data.coco_root=/data/coco
  python -m probing.extract --config=configs/qwen.py:category --workdir=runs/qwen2vl_category \
      --config.data.coco_root=/data/coco
  python -m probing.extract --config=configs/qwen.py:category,tao,withcat --workdir=runs/x_tao_withcat
  python -m probing.train_all_layers --workdir=runs/qwen2vl_caption
  python -m probing.extract --config=configs/qwen.py:smoke --workdir=/tmp/qwen_smoke  # ~1 min, CPU

Arguments (comma-separated, any order): the task, caption (default) or
category; the construction, study2025 (default: the 2025 study's, one random
negative caption, 3 candidate categories among its 40 with its singular object
prompt, chat template, mean, last and text_mean pooling) or tao (Tao et al.
2024: 5 positives with hard negatives, all 80 categories, raw prompts,
last-token features); for categories nocat (default) or withcat (the setups
in full: probing.extraction.config.apply_paper_setup; train a tao category
workdir's probes with --config=configs/probe.py:tao for Tao's separate probe
per category, the default being one joint probe); smoke swaps in the
tiny checkpoint of the same architecture trained on the generated world
(trained:<family>) and a small generated dataset. COCO 2017 is expected under coco_root as
annotations/{instances,captions}_train2017.json and train2017/*.jpg; the model
is fetched from the hub on first use (or give a local directory as
--config.model.name).

Expected runtime on one H100 (bf16, batch 16): 24,000 images → 48,000 caption
rows (or 24,000 category rows) of about 400 tokens each; at the ≥100 rows/s
the extraction engine targets that is roughly 8 minutes (4 for category).
The tao setup has 10 rows per image (5 positives, 5 hard negatives) but
shares each image's prefix across them. This is an estimate, not yet
measured on a GPU.
"""

from probing.extraction.config import coco_study_config


def get_config(arg=None):
    # "main" follows the hub branch; the manifest records the commit actually
    # loaded (model.resolved_revision). Pin that commit here once validated.
    return coco_study_config(
        arg, model_name="Qwen/Qwen2-VL-2B-Instruct", family="qwen2_vl", revision="main"
    )
