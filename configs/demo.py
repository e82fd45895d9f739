"""The embedded default: a tiny random-init VLM on a generated COCO-format dataset.

  python -m probing.extract --config=configs/demo.py:qwen2_vl,caption --workdir=runs/demo/q_cap
  python -m probing.demo      # all families × tasks, probes and report (about 1 min on 2 CPUs)

The argument is "<family>,<task>[,withcat][,trained]": family qwen2_vl
(default) or fast_vlm (any family `probing.models.tiny` builds), task caption
(default) or category, for categories the prompt nocat (default) or withcat;
"trained" swaps the random checkpoint for the tiny model of the same
architecture trained on the generated world (`trained:<family>`, committed in
probing/models/trained/checkpoints/; qwen2_vl and fast_vlm).
One extraction takes about 5-15 s on a 2-core CPU. Nothing is downloaded:
the checkpoint is built locally (random weights, real architecture, real
image processor, a tokenizer trained on the fly) and loaded with
from_pretrained like a hub checkpoint.
"""

from probing.extraction.config import extraction_config, parse_config_arg
from probing.models.tiny import tiny_families


def get_config(arg=None):
    args = parse_config_arg(
        arg,
        {
            "family": ("qwen2_vl", *tiny_families()),
            "task": ("caption", "category"),
            "prompt": ("nocat", "withcat"),
            "weights": ("tiny", "trained"),
        },
    )
    config = extraction_config()
    # "tiny:<family>" builds (once, cached) a tiny random checkpoint of that
    # architecture and loads it through the same from_pretrained path as a hub
    # id; "trained:<family>" loads the committed checkpoint trained on the
    # generated world (images of another generator seed than these).
    config.model.name = f"{args['weights']}:{args['family']}"
    config.data.source = "synthetic"
    # 240 images: 160 train / 40 val / 40 test; enough rows for stable probes,
    # small enough for the whole demo to stay within a few minutes.
    config.data.synthetic.num_images = 240
    config.task.kind = args["task"]
    # Category runs: NoCat, or Tao's WithCat (the image's other categories
    # listed), with the first generated tokens recorded for Tao's Table 1.
    config.task.category_prompt = args["prompt"]
    if args["task"] == "category":
        config.extract.first_token_topk = 5
    config.task.split_sizes.val = 40
    config.task.split_sizes.test = 40
    config.extract.batch_size = 16
    config.extract.poolings = ("mean", "last")
    # The tiny models run several times faster on one thread than on many.
    config.extract.torch_threads = 1
    return config
