"""The embedded default: a tiny VLM trained on a generated COCO-format world, probed on it.

  python -m probing.extract --config=configs/demo.py:qwen2_vl,caption --workdir=runs/demo/q_cap
  python -m probing.demo      # all families × tasks, probes and report (about 4 min on 2 CPUs)

The argument is "<family>,<task>[,withcat][,<weights>]": family qwen2_vl
(default) or fast_vlm, task caption (default) or category, for categories the
prompt nocat (default) or withcat, and the weights:

* trained (default): the tiny model of the real architecture trained on the
  generated world until it answers its caption questions (`trained:<family>`,
  committed in probing/models/trained/checkpoints/; qwen2_vl and fast_vlm);
* untrained: the same architecture and processor with fresh random weights
  (`model.random_init`), the untrained baseline the demo draws beside it;
* tiny: the random 3-layer checkpoint built on the fly (`tiny:<family>`, any
  family `probing.models.tiny` builds), for tests of the loading path.

One extraction takes about 5-20 s on a 2-core CPU. Nothing is downloaded:
every checkpoint is local and loaded with from_pretrained like a hub one.
"""

from probing.extraction.config import extraction_config, parse_config_arg
from probing.models.tiny import tiny_families
from probing.models.trained import trained_families

# Which checkpoint a weights word loads: (model.name prefix, random_init).
WEIGHTS = {"trained": ("trained", False), "untrained": ("trained", True), "tiny": ("tiny", False)}


def get_config(arg=None):
    args = parse_config_arg(
        arg,
        {
            "family": ("qwen2_vl", *tiny_families()),
            "task": ("caption", "category"),
            "prompt": ("nocat", "withcat"),
            "weights": tuple(WEIGHTS),
        },
    )
    prefix, random_init = WEIGHTS[args["weights"]]
    if prefix == "trained" and args["family"] not in trained_families():
        raise ValueError(
            f"configs/demo.py: family {args['family']!r} has no trained checkpoint (trained "
            f"families: {', '.join(trained_families())}); add ',tiny' to the config argument "
            "for its random checkpoint"
        )
    config = extraction_config()
    # "trained:<family>" loads the committed checkpoint trained on the generated
    # world (images of another generator seed than these); "tiny:<family>"
    # builds (once, cached) a random checkpoint. Either loads through the same
    # from_pretrained path as a hub id.
    config.model.name = f"{prefix}:{args['family']}"
    # The untrained baseline: the trained checkpoint's config and processor,
    # weights drawn afresh (model.random_init_seed).
    config.model.random_init = random_init
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
    if args["task"] == "category":
        # Categories are a property of the image: its tokens' mean shows what
        # the projected image features (layer 0) already hold.
        config.extract.poolings = ("mean", "last", "image_mean")
    # The tiny models run several times faster on one thread than on many.
    config.extract.torch_threads = 1
    return config
