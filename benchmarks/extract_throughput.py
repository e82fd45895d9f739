"""Stage-1 throughput: the hooked, pooled forward against the naive one, side by side.

  python benchmarks/extract_throughput.py --size=tiny                 # < 1 min on CPU
  python benchmarks/extract_throughput.py --size=full --family=qwen2_vl \
      --dtype=bfloat16 --batch_size=32 --num_batches=8                # a GPU
  python benchmarks/extract_throughput.py --size=full --family=qwen2_vl \
      --device=cpu --batch_size=1 --num_batches=3 --paths=naive,engine  # CPU, per image

On a CPU the full sizes cost seconds per image: on the project's 2-core AVX2
machine about 20 s for Qwen2-VL-2B and 6 s for FastVLM-0.5B in float32 (README,
"Extraction on CPU"), so the CPU command above runs 5–8 min for Qwen2-VL-2B
(model build, one warm-up and three timed images per path) and needs about
11 GB of RAM in float32. Leave the prefix-sharing paths out there: each of
their batches is --prompts_per_image rows. bfloat16 halves the memory but, on
a CPU without bf16 arithmetic (AVX2), is several times slower:
`--dtype_ops --device=cpu` times the models' main ops in both dtypes in seconds.

Both paths get the very same preprocessed batches (preprocessing is not
timed): COCO-sized 640×480 images and caption-entailment prompts.

* naive:  `model(**inputs, output_hidden_states=True)` per batch, then every
  layer pooled from the returned hidden states (all L+1 full tensors and the
  LM head over every position materialised), what the 2025 study did;
* engine: `probing.extraction.forward.PooledForward.run`, pooling inside
  forward hooks, LM head on one position;
* engine+prefix: `PooledForward.run_shared` with --prompts_per_image prompts
  of one image per group, the image and common prompt words run once.

Printed per path: examples/s, seconds per example (the range over timed
batches, divided by their rows), tokens/s, peak memory, MFU (CUDA only: FLOPs ≈
2 × decoder matmul parameters × tokens, against the GPU's dense bf16 peak), and the ratios.
`--size=full` builds Qwen2-VL-2B or FastVLM-0.5B at their real sizes with
random weights (speed does not depend on the weights) from the numbers below;
the tokenizer of the tiny checkpoint stands in for the real one (token ids
only have to exist in the embedding table).

Peak memory: on CUDA the allocator's peak during the path; on a CPU the
process's resident set, sampled every 5 ms during the path (it includes the
model's weights and whatever earlier paths left allocated).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time

import torch
from absl import app, flags
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probing.extraction.forward import PooledForward
from probing.extraction.pooling import pool_states
from probing.models import default_model_config, load_model
from probing.models.registry import adapter_class_for_model_type
from probing.models.tiny import build_tiny_checkpoint

_SIZE = flags.DEFINE_enum("size", "tiny", ["tiny", "full"], "Tiny test checkpoint or full size.")
_FAMILY = flags.DEFINE_enum("family", "qwen2_vl", ["qwen2_vl", "fast_vlm"], "Model family.")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16", "float16"], "Default: bfloat16 on CUDA, else float32."
)
_DEVICE = flags.DEFINE_string("device", "auto", "auto, cpu or cuda[:N].")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Rows per forward.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Timed batches per path.")
_PROMPTS_PER_IMAGE = flags.DEFINE_integer(
    "prompts_per_image", 10, "Prompts sharing one image in the prefix-sharing path (Tao: 10)."
)
_POOLINGS = flags.DEFINE_list("poolings", ["mean", "last"], "Poolings computed by both paths.")
_ATTN = flags.DEFINE_string("attn_implementation", None, "sdpa, eager, flash_attention_2.")
PATHS = ("naive", "engine", "engine/10ppi", "engine+prefix")
_PATHS = flags.DEFINE_list(
    "paths",
    list(PATHS),
    "Paths to time (a subset of the four); on a CPU at full size: naive,engine.",
)
_THREADS = flags.DEFINE_integer("threads", None, "torch intra-op threads (default: torch's).")
_DTYPE_OPS = flags.DEFINE_bool(
    "dtype_ops",
    False,
    "Only time the two models' main ops at their real shapes in float32 and bfloat16 on "
    "--device (seconds): whether this machine gains from bfloat16 at all.",
)
_COUNT_FLOPS = flags.DEFINE_bool(
    "count_flops", False, "Count the hooked forward's FLOPs (one extra untimed forward per path)."
)

# Qwen2-VL-2B-Instruct, from its config.json / preprocessor_config.json on the
# hub (Qwen/Qwen2-VL-2B-Instruct): 28 layers of width 1536, GQA 12/2 heads,
# a 32-block 1280-wide ViT with 14-pixel patches merged 2×2.
QWEN2_VL_2B_TEXT = {
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
}
QWEN2_VL_2B_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 1536,
    "mlp_ratio": 4,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
QWEN2_VL_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
# FastVLM-0.5B (apple/FastVLM-0.5B, converted to transformers' fast_vlm): a
# Qwen2-0.5B decoder (24 layers of width 896, GQA 14/2) behind FastViT-HD
# ("fastvit_mci3", 64× downsampling, 3072 output channels) at 1024 px: 256
# image tokens.
FAST_VLM_05B_TEXT = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
}
FAST_VLM_IMAGE_SIDE = 1024
# Dense bf16 peak FLOP/s by GPU name fragment, for the MFU estimate.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
CAPTIONS = (
    "A man riding a wave on top of a surfboard.",
    "Two dogs playing with a frisbee in a grassy park on a sunny day.",
    "A plate of food.",
    "A red double decker bus driving down a city street next to tall buildings.",
    "A cat sleeping on a laptop keyboard.",
)


def _full_model(
    family: str,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
):
    """A full-size random-init model on `device` and an adapter for it (tiny tokenizer)."""
    import transformers

    tiny = build_tiny_checkpoint(family)
    processor = transformers.AutoProcessor.from_pretrained(tiny)
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    if family == "qwen2_vl":
        config = transformers.Qwen2VLConfig(
            text_config=QWEN2_VL_2B_TEXT,
            vision_config=QWEN2_VL_2B_VISION,
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=True,
        )
        processor.image_processor = transformers.Qwen2VLImageProcessor(size=QWEN2_VL_PIXELS)
    else:
        tokens = (FAST_VLM_IMAGE_SIDE // 64) ** 2
        config = transformers.FastVlmConfig(
            text_config=FAST_VLM_05B_TEXT,
            vision_config={
                "model_type": "timm_wrapper",
                "architecture": "fastvit_mci3",
                "do_pooling": False,
                "global_pool": "avg",
                "hidden_size": 3072,
                "model_args": {"inference_mode": True},
            },
            image_token_index=ids("<image>"),
            image_seq_length=tokens,
            tie_word_embeddings=True,
        )
        side = {"height": FAST_VLM_IMAGE_SIDE, "width": FAST_VLM_IMAGE_SIDE}
        processor.image_processor.size = {"shortest_edge": FAST_VLM_IMAGE_SIDE}
        processor.image_processor.crop_size = side
    # Built on the device itself: random init of billions of weights is seconds on a GPU.
    with torch.device(device):
        model = transformers.AutoModelForImageTextToText.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    model.eval().requires_grad_(False)
    adapter = adapter_class_for_model_type(config.model_type)(model, processor)
    return model, adapter


def _images(count: int) -> list[Image.Image]:
    """COCO-sized 640×480 images with a few shapes drawn on them."""
    images = []
    for i in range(count):
        image = Image.new("RGB", (640, 480), (30 * i % 255, 90, 160))
        draw = ImageDraw.Draw(image)
        draw.ellipse((40 + 7 * i % 200, 60, 300, 320), fill=(200, 40, 40))
        draw.rectangle((350, 100 + 5 * i % 250, 600, 400), fill=(40, 200, 90))
        images.append(image)
    return images


def _prompt(caption: str) -> str:
    return f'This image describes "{caption}". Is it right? Answer:'


@dataclasses.dataclass
class Timing:
    name: str
    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    peak_bytes: int = 0
    # Useful FLOPs of the timed work when counted (measure(count_flops=True)):
    # those of the hooked unshared forward on the same rows, whatever the path ran.
    flops: float = 0.0
    # Seconds per example of each timed batch (batch seconds / its rows).
    per_example: list[float] = dataclasses.field(default_factory=list)
    # Process CPU seconds (all threads) over the timed batches: on a shared
    # machine it moves less with the others' load than wall time does (it still
    # grows with contention: threads waiting on each other, caches shared).
    cpu_seconds: float = 0.0

    def line(self, flops_per_token: float, peak_flops: float | None) -> str:
        rate = self.examples / self.seconds
        parts = [
            f"{self.name:14s}",
            f"{rate:9.2f} ex/s",
            f"{min(self.per_example):7.3f}-{max(self.per_example):.3f} s/ex",
            f"CPU {self.cpu_seconds / self.examples:7.3f} s/ex",
            f"{self.tokens / self.seconds:11.0f} tokens/s",
            f"peak mem {self.peak_bytes / 2**30:6.2f} GiB",
        ]
        if self.flops:
            parts.append(f"{self.flops / self.examples / 1e9:8.4g} GFLOP/ex")
        if peak_flops:
            mfu = flops_per_token * self.tokens / self.seconds / peak_flops
            parts.append(f"MFU {100 * mfu:5.1f}%")
        return " | ".join(parts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_bytes() -> int:
    """The process's resident set now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class _PeakMemory:
    """Peak memory over a block: the CUDA allocator's, or the sampled host RSS.

    ru_maxrss would be the whole process's lifetime peak (model build and
    earlier paths included), so on a CPU a thread samples the RSS instead.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _resident_bytes())

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = _resident_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _resident_bytes())


def _time(name, batches, step, device) -> Timing:
    step(batches[0])  # warm-up: kernels, caches, allocator
    _sync(device)
    timing = Timing(name)
    cpu_start = time.process_time()
    with _PeakMemory(device) as memory:
        for batch in batches:
            start = time.perf_counter()
            examples, tokens = step(batch)
            _sync(device)
            seconds = time.perf_counter() - start
            timing.examples += examples
            timing.tokens += tokens
            timing.seconds += seconds
            timing.per_example.append(seconds / examples)
    timing.cpu_seconds = time.process_time() - cpu_start
    timing.peak_bytes = memory.peak
    return timing


def build_batches(adapter, device, batch_size: int, num_batches: int, per_image: int):
    """The same preprocessed inputs for every path: plain batches and prefix-sharing batches.

    Plain: one image per row. Shared: per_image rows (distinct captions) per
    image, with the group leaders' inputs and the group of each row.
    """
    plain_batches, shared_batches = [], []
    images = _images(batch_size * num_batches)
    for b in range(num_batches):
        rows = range(b * batch_size, (b + 1) * batch_size)
        prompts = [_prompt(CAPTIONS[r % len(CAPTIONS)]) for r in rows]
        batch = adapter.build_batch([images[r] for r in rows], prompts)
        plain_batches.append(adapter.to_model(batch))
        groups = max(1, batch_size // per_image)
        group_images = images[b * groups : (b + 1) * groups]
        row_images = [image for image in group_images for _ in range(per_image)]
        # Distinct captions per image (suffix i), as Tao's 5 positives + 5 negatives.
        row_prompts = [
            _prompt(f"{CAPTIONS[i % len(CAPTIONS)]} ({i})") for i in range(per_image)
        ] * groups
        shared = adapter.build_batch(row_images, row_prompts)
        leaders = adapter.build_batch(group_images, row_prompts[::per_image])
        group_of = torch.arange(groups).repeat_interleave(per_image).to(device)
        shared_batches.append((adapter.to_model(shared), adapter.to_model(leaders), group_of))
    return plain_batches, shared_batches


def _counted_flops(step, batch) -> tuple[float, int]:
    """FLOPs that torch counts for one call of step(batch), and its tokens."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _, tokens = step(batch)
    return float(counter.get_total_flops()), tokens


def measure(
    model,
    adapter,
    device,
    poolings,
    plain_batches,
    shared_batches,
    count_flops=False,
    paths=PATHS,
):
    """Times the `paths` (naive, engine, engine/10ppi, engine+prefix) on the batches: a Timing each.

    With count_flops, each Timing also gets the useful FLOPs of its work: those
    torch counts for the hooked unshared forward (vision tower, decoder, LM
    head on one position) per token of the same batches, times its tokens.
    """
    if unknown := [p for p in paths if p not in PATHS]:
        raise ValueError(f"unknown paths {unknown}; known: {', '.join(PATHS)}")

    def naive(inputs):
        with torch.inference_mode():
            out = model(**inputs, output_hidden_states=True)
            mask = adapter.attention_mask(inputs)
            image_mask = adapter.image_token_mask(inputs)
            pooled = [pool_states(h, mask, image_mask, poolings) for h in out.hidden_states]
            for name in poolings:
                torch.stack([p[name] for p in pooled], dim=1).cpu()
        return mask.shape[0], int(mask.sum())

    timings = []
    # The naive path runs without our hooks installed.
    if "naive" in paths:
        timings.append(_time("naive", plain_batches, naive, device))
    with PooledForward(model, adapter, poolings, with_image=True) as engine:

        def hooked(inputs):
            result = engine.run(inputs)
            for values in result.pooled.values():
                values.cpu()
            return len(next(iter(result.pooled.values()))), result.tokens

        def unshared(batch):
            return hooked(batch[0])

        def shared(batch):
            inputs, leaders, groups = batch
            result = engine.run_shared(inputs, leaders, groups)
            for values in result.pooled.values():
                values.cpu()
            return len(groups), result.tokens

        runs = {
            "engine": (plain_batches, hooked),
            "engine/10ppi": (shared_batches, unshared),
            "engine+prefix": (shared_batches, shared),
        }
        for name in PATHS[1:]:
            if name in paths:
                batches, step = runs[name]
                timings.append(_time(name, batches, step, device))
        if count_flops:
            # Counted on the first batch (untimed), scaled by each path's tokens:
            # plain rows for naive/engine, the shared batches' rows for the others.
            per_token = {}
            for timing in timings:
                plain = timing.name in ("naive", "engine")
                if plain not in per_token:
                    step, batches = (hooked, plain_batches) if plain else (unshared, shared_batches)
                    flops, tokens = _counted_flops(step, batches[0])
                    per_token[plain] = flops / tokens
                timing.flops = per_token[plain] * timing.tokens
    return timings


# (name, op) at the full-size models' shapes for one 640×480 image: Qwen2-VL-2B's
# decoder MLP (~420 tokens × 1536 → 8960) and ViT MLP (1564 patches × 1280 → 5120),
# FastVLM-0.5B's decoder MLP (~280 tokens × 896 → 4864) and FastViT-HD-like convs
# (a 1×1 conv and a 7×7 depthwise conv on a 64×64 map).
def _dtype_ops(dtype: torch.dtype, device: torch.device) -> dict:
    def linear(tokens, width, out):
        x = torch.randn(tokens, width, dtype=dtype, device=device)
        w = torch.randn(out, width, dtype=dtype, device=device)
        return lambda: torch.nn.functional.linear(x, w), 2 * tokens * width * out

    def conv(channels, out, kernel, groups):
        x = torch.randn(1, channels, 64, 64, dtype=dtype, device=device)
        w = torch.randn(out, channels // groups, kernel, kernel, dtype=dtype, device=device)
        flops = 2 * 64 * 64 * out * (channels // groups) * kernel * kernel

        def run():
            return torch.nn.functional.conv2d(x, w, padding=kernel // 2, groups=groups)

        return run, flops

    return {
        "qwen2_vl decoder MLP": linear(420, 1536, 8960),
        "qwen2_vl ViT MLP": linear(1564, 1280, 5120),
        "fast_vlm decoder MLP": linear(280, 896, 4864),
        "fast_vlm 1x1 conv": conv(192, 768, 1, 1),
        "fast_vlm 7x7 depthwise": conv(192, 192, 7, 192),
    }


def time_dtype_ops(device: torch.device, repeats: int = 2) -> None:
    """Prints wall and process-CPU ms per op in float32 and bfloat16, and the bf16 speedup."""
    capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else device
    print(f"ops at the models' shapes on {capability}, {torch.get_num_threads()} threads:")
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        for name, (op, flops) in _dtype_ops(dtype, device).items():
            with torch.inference_mode():
                op()  # warm-up
                _sync(device)
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(repeats):
                    op()
                _sync(device)
                wall = (time.perf_counter() - wall) / repeats
                cpu = (time.process_time() - cpu) / repeats
            results[name, dtype] = wall
            print(
                f"  {name:24s} {str(dtype).removeprefix('torch.'):8s} {1e3 * wall:9.1f} ms "
                f"(CPU {1e3 * cpu:9.1f} ms) {flops / wall / 1e9:8.1f} GFLOP/s"
            )
    for name in _dtype_ops(torch.float32, torch.device("meta")):
        ratio = results[name, torch.float32] / results[name, torch.bfloat16]
        print(f"  {name:24s} bfloat16 / float32 speed: {ratio:.2f}x")


def main(argv: list[str]) -> None:
    del argv
    device_name = _DEVICE.value
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    dtype_name = _DTYPE.value or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    if _THREADS.value:
        torch.set_num_threads(_THREADS.value)
    if _DTYPE_OPS.value:
        time_dtype_ops(device)
        return
    torch.manual_seed(0)
    built = time.perf_counter()
    if _SIZE.value == "tiny":
        config = default_model_config()
        config.name = f"tiny:{_FAMILY.value}"
        config.device, config.dtype = device_name, dtype_name
        config.attn_implementation = _ATTN.value
        model, _, adapter = load_model(config)
    else:
        model, adapter = _full_model(_FAMILY.value, dtype, device, _ATTN.value)
    built = time.perf_counter() - built
    poolings = tuple(_POOLINGS.value)
    batch_size, per_image = _BATCH.value, _PROMPTS_PER_IMAGE.value
    plain_batches, shared_batches = build_batches(
        adapter, device, batch_size, _NUM_BATCHES.value, per_image
    )
    timings = measure(
        model,
        adapter,
        device,
        poolings,
        plain_batches,
        shared_batches,
        count_flops=_COUNT_FLOPS.value,
        paths=tuple(_PATHS.value),
    )
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak_flops = next((v for k, v in PEAK_BF16_FLOPS.items() if gpu and k in gpu), None)
    # Matmul parameters of the decoder: the embedding table is a lookup, and
    # the LM head runs on one position per row (the vision tower is left out).
    decoder = adapter.language_model(model)
    embedding = decoder.get_input_embeddings().weight.numel()
    flops_per_token = 2.0 * (sum(p.numel() for p in decoder.parameters()) - embedding)
    text = model.config.get_text_config()
    print(
        f"{_SIZE.value} {_FAMILY.value}: {text.num_hidden_layers} layers x {text.hidden_size}, "
        f"{dtype_name} on {gpu or 'CPU'}, batch {batch_size}, {_NUM_BATCHES.value} batches, "
        f"poolings {','.join(poolings)}, {per_image} prompts per image for prefix sharing"
    )
    # The load average says how much of the machine the timings had (2 cores here).
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"built in {built:.0f} s; {torch.get_num_threads()} torch threads on {os.cpu_count()} "
        f"CPUs; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end"
    )
    for timing in timings:
        print(timing.line(flops_per_token, peak_flops))
    by_name = {t.name: t.examples / t.seconds for t in timings}
    if {"engine", "naive"} <= by_name.keys():
        print(f"engine / naive:                 {by_name['engine'] / by_name['naive']:.2f}x ex/s")
    if {"engine+prefix", "engine/10ppi"} <= by_name.keys():
        print(
            f"prefix sharing / unshared:      "
            f"{by_name['engine+prefix'] / by_name['engine/10ppi']:.2f}x prompts/s"
        )
    if not peak_flops:
        print("MFU: not estimated (CPU or a GPU without a known peak)")


if __name__ == "__main__":
    app.run(main)
