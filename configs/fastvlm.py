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
rows (or 24,000 category rows) of about 300 tokens each (FastViT emits 256 image tokens at 1024 px); at the ≥100 rows/s
the extraction engine targets that is roughly 8 minutes (4 for category).
The tao setup has 10 rows per image (5 positives, 5 hard negatives) but
shares each image's prefix across them. This is an estimate, not yet
measured on a GPU.
"""

from probing.extraction.config import coco_study_config

# TO REVIEW BEFORE A REAL RUN: pin the commit hash of KamilaMila/FastVLM-0.5B
# that was validated (huggingface.co/KamilaMila/FastVLM-0.5B/commits/main).
# This is a community conversion, not Apple's release, and its files may be
# replaced under "main"; no hash is written here because none could be
# verified without hub access. Until it is pinned, the manifest's
# model.resolved_revision records the commit that was actually loaded.
FASTVLM_REVISION = "main"


def get_config(arg=None):
    # FastVLM-0.5B converted to transformers' native fast_vlm format (Apple's
    # apple/FastVLM-0.5B repository needs trust_remote_code and is not this class).
    return coco_study_config(
        arg, model_name="KamilaMila/FastVLM-0.5B", family="fast_vlm", revision=FASTVLM_REVISION
    )
