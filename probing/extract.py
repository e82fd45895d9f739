"""Stage 1 entry point: pooled per-layer features of a frozen VLM.

  python -m probing.extract --config=configs/qwen.py --workdir=runs/qwen_caption
  python -m probing.extract --config=configs/qwen.py:smoke --workdir=/tmp/smoke
  python -m probing.extract --config=configs/demo.py:fast_vlm,category \
      --workdir=runs/x --config.extract.batch_size=4

The workdir layout is documented in WORKSPACE.md. Rerunning the same command
on an interrupted workdir resumes it.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from probing.cli import run_main
from probing.config_files import compact
from probing.extraction.runner import extract
from probing.progress import quiet_libraries

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Extraction config file, e.g. configs/qwen.py[:arg].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory (or gs:// / s3:// URL) to write.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    quiet_libraries()
    logging.info("config (all of it in the workdir's config.json):\n%s", compact(_CONFIG.value))
    manifest = extract(_CONFIG.value, _WORKDIR.value)
    print(
        f"Wrote {manifest['num_examples']} rows x {manifest['num_layers']} layers "
        f"to {_WORKDIR.value}"
    )


if __name__ == "__main__":
    run_main(main, "probing.extract")
