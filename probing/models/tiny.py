"""Tiny, randomly initialised checkpoints of real VLM architectures.

No machine of this project reaches the Hugging Face hub, yet tests and the
embedded demo must exercise exactly the code path that loads
``Qwen/Qwen2-VL-2B-Instruct`` or FastVLM. ``build_tiny_checkpoint(family)``
therefore writes, once, a local directory that ``from_pretrained`` loads like
the real checkpoint:

* the family's real model class with a few small decoder layers and a small
  vision tower, randomly initialised from a fixed seed;
* a BPE tokenizer trained on the fly (``tokenizers``) on caption-like text,
  with the family's special tokens (image / vision tokens, chat-template
  tokens, pad / eos): byte-level with Qwen2's pre-tokeniser, saved as
  Qwen2Tokenizer, for the Qwen2- and Llama-based families; SentencePiece-style
  ("▁" for spaces, byte fallback), saved as GemmaTokenizer, for PaliGemma and
  Gemma 3;
* the family's real image processor, configured so that a ~128×96 image gives
  a handful of image tokens (4 to 20), and the family's real processor with a
  chat template that renders prompts like the real one (PaliGemma has none).

Families: ``qwen2_vl``, ``qwen2_5_vl``, ``llava``, ``paligemma`` and ``gemma3``
pad on the left, ``fast_vlm`` and ``idefics3`` on the right, so code built on
them meets both conventions.
A config names such a checkpoint ``"tiny:<family>"``. Directories are cached
under ``$PROBING_CACHE_DIR`` (default ``~/.cache/probing``), keyed by family,
:data:`TINY_VERSION` and the transformers version, and written atomically so
concurrent builders never see a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Bump whenever a builder below changes what it writes, so stale caches are ignored.
TINY_VERSION = "2"

# Seed of every random choice of a build (corpus order, weights): two builds of
# one family are identical. Deliberately not 0, the default seed of
# load_model's random_init baseline, which would otherwise reproduce these
# very weights.
_BUILD_SEED = 1729

# Qwen2's pre-tokenisation regex (splits letters, digits, punctuation and
# whitespace runs); the trained BPE must use the same split as the real
# Qwen2Tokenizer, which re-creates this pipeline when it loads.
_QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Special tokens of the Qwen2 family, in the order the real vocabulary lists
# them after its BPE entries (ids are therefore contiguous and after the BPE).
_QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Renders a conversation the way Qwen2-VL-Instruct's template does: a default
# system turn, each image as <|vision_start|><|image_pad|><|vision_end|> in
# content order, then the generation prompt.
_QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Renders a conversation the way the transformers FastVLM conversion does
# (also the ChatML-style template of Qwen2-based LLaVA checkpoints):
# a default system turn, all images of a turn first (one <image> each, expanded
# by the processor), then every text part on its own line.
_FAST_VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ '\n' + message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "<image>{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + part['text'] }}{% endfor %}"
    "{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words of the caption-like training corpus: COCO-ish categories, attributes
# and the phrasing of the probing prompts, so prompts tokenise into few tokens.
_OBJECT_WORDS = (
    "person man woman child dog cat horse bird cow sheep elephant bear zebra giraffe car "
    "bus truck bicycle motorcycle airplane train boat bottle cup bowl chair couch bed table "
    "tv laptop phone book clock vase pizza cake banana apple sandwich umbrella kite ball "
    "circle square triangle star"
)
_ATTRIBUTE_WORDS = (
    "red green blue yellow black white orange purple brown gray small large big tiny old young"
)
_PLACE_WORDS = "street field kitchen room beach park table grass water sky road snow city"
_OBJECTS = tuple(_OBJECT_WORDS.split())
_ATTRIBUTES = tuple(_ATTRIBUTE_WORDS.split())
_PLACES = tuple(_PLACE_WORDS.split())
_TEMPLATES = (
    "A {a} {o} on the {p}.",
    "Two {o}s next to a {a} {o2}.",
    "There is a {a} {o} near the {p}.",
    "A photo of a {o} and a {o2} in the {p}.",
    'This image describes "A {a} {o}." Is it right? Answer: Yes',
    "This image contains: a {a} {o} and a {o2}.\nIs this right? No",
    "Is there a {o} in the image? Answer: {yn}",
    "The image shows {n} {o}s, a {o2} and a {a} {p}.",
    "Describe the image. A {a} {o} sitting by the {p}.",
    # Chat-template text, so the system turn tokenises into few tokens.
    "system\nYou are a helpful assistant.\nuser\n{o}\nassistant\n",
)


def _caption_corpus(num_lines: int, rng: random.Random) -> Iterator[str]:
    """Yields caption-like lines for tokenizer training."""
    for _ in range(num_lines):
        template = rng.choice(_TEMPLATES)
        yield template.format(
            a=rng.choice(_ATTRIBUTES),
            o=rng.choice(_OBJECTS),
            o2=rng.choice(_OBJECTS),
            p=rng.choice(_PLACES),
            n=rng.randint(1, 9),
            yn=rng.choice(("Yes", "No")),
        )


def _train_byte_level_bpe(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Trains a byte-level BPE with Qwen2's pre-tokeniser; returns its vocab and merges."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # Every byte must be in the vocabulary so any text can be encoded.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = random.Random(_BUILD_SEED)
    tokenizer.train_from_iterator(_caption_corpus(3000, rng), trainer=trainer)
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    # The trained BPE exposes its merges only through its serialised form.
    model_json = json.loads(tokenizer.to_str())["model"]
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]
    ]
    return vocab, merges


def _qwen2_tokenizer(
    padding_side: str, extra_special_tokens: tuple[str, ...] = ()
) -> transformers.PreTrainedTokenizerBase:
    """A trained Qwen2Tokenizer with Qwen2's special tokens (plus ``extra_special_tokens``)."""
    from transformers import AddedToken, Qwen2Tokenizer

    vocab, merges = _train_byte_level_bpe(vocab_size=1024)
    # <|endoftext|> first, as in Qwen2's vocabulary; it is also the pad token.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, padding_side=padding_side
    )
    specials = [
        AddedToken(tok, special=True, normalized=False)
        for tok in (*_QWEN2_SPECIAL_TOKENS, *extra_special_tokens)
    ]
    tokenizer.add_tokens(specials, special_tokens=True)
    # Instruct checkpoints end an answer with <|im_end|>, so that is their eos.
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


# Gemma's special tokens in the order of its vocabulary's first ids.
_GEMMA_BASE_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")


def _gemma_tokenizer(
    padding_side: str,
    extra_special_tokens: tuple[str, ...] = (),
    named_special_tokens: dict[str, str] | None = None,
) -> transformers.PreTrainedTokenizerBase:
    """A trained GemmaTokenizer (SentencePiece-style BPE) plus extra special tokens.

    ``named_special_tokens`` ({attribute: token}) become tokenizer attributes
    as in the real checkpoints (Gemma 3's ``boi_token``, ``image_token``, ...).

    The real Gemma tokenizer is a SentencePiece BPE: spaces become "▁", words
    keep their leading "▁", and unknown characters fall back to byte tokens
    ``<0x00>`` .. ``<0xFF>``. GemmaTokenizer rebuilds exactly that pipeline
    from a vocabulary and merges, so a BPE trained here with the same
    normalisation and word split loads as the family's real tokenizer class.
    """
    from transformers import AddedToken, GemmaTokenizer

    trainer_tokenizer = Tokenizer(models.BPE())
    word_start = "\u2581"  # SentencePiece's "▁", which replaces every space
    trainer_tokenizer.normalizer = normalizers.Replace(" ", word_start)
    # Merges never cross a word start or a newline, as in SentencePiece.
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(word_start, behavior="merged_with_next"),
            pre_tokenizers.Split("\n", behavior="isolated"),
        ]
    )
    trainer = trainers.BpeTrainer(vocab_size=768, show_progress=False)
    rng = random.Random(_BUILD_SEED)
    # Gemma's turn text ("user", "model") as in its chat template, so that
    # the role names are single tokens as in the real vocabulary.
    lines = (f"user\n{line}\nmodel\n" for line in _caption_corpus(3000, rng))
    trainer_tokenizer.train_from_iterator(lines, trainer=trainer)
    pieces = trainer_tokenizer.get_vocab(with_added_tokens=False)
    model_json = json.loads(trainer_tokenizer.to_str())["model"]
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]
    ]
    # Gemma's layout: base specials, the 256 byte-fallback tokens, then the pieces.
    vocab = {token: index for index, token in enumerate(_GEMMA_BASE_TOKENS)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for piece, _ in sorted(pieces.items(), key=lambda item: item[1]):
        vocab.setdefault(piece, len(vocab))
    named = dict(named_special_tokens or {})
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        padding_side=padding_side,
        **({"extra_special_tokens": named} if named else {}),
    )
    specials = (
        *extra_special_tokens,
        *(t for t in named.values() if t not in extra_special_tokens),
    )
    if specials:
        tokenizer.add_tokens(
            [AddedToken(tok, special=True, normalized=False) for tok in specials],
            special_tokens=True,
        )
    return tokenizer


def _padded_vocab_size(tokenizer: transformers.PreTrainedTokenizerBase) -> int:
    """Embedding rows for ``tokenizer``, rounded up to 64 like the real checkpoints."""
    return (len(tokenizer) + 63) // 64 * 64


# Width of every tiny text decoder.
_TINY_TEXT_HIDDEN = 64


# Decoder shape of every tiny text model: 3 layers, 64 wide, 4 heads (2 KV).
_TINY_DECODER_SHAPE = {
    "hidden_size": _TINY_TEXT_HIDDEN,
    "intermediate_size": 2 * _TINY_TEXT_HIDDEN,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def _tiny_qwen2_text_config(vocab_size: int, tokenizer) -> dict:
    """Text-decoder fields shared by the Qwen2-based tiny checkpoints."""
    return {
        "vocab_size": vocab_size,
        **_TINY_DECODER_SHAPE,
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "tie_word_embeddings": True,
    }


def _build_qwen_vl(
    out_dir: Path,
    config_class: type,
    model_class: type,
    processor_class: type,
    vision_config: dict,
) -> None:
    """Writes a tiny Qwen2-VL-style checkpoint (Qwen2-VL, Qwen2.5-VL) to ``out_dir``."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    # Left padding here and right padding in the FastVLM checkpoint, so that
    # code built on these checkpoints is exercised under both conventions.
    tokenizer = _qwen2_tokenizer(padding_side="left")
    text = _tiny_qwen2_text_config(_padded_vocab_size(tokenizer), tokenizer)
    # head_dim 16: the multimodal rope splits its 8 frequencies over (t, h, w).
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 1_000_000.0,
        "mrope_section": [2, 3, 3],
    }
    config = config_class(
        text_config=text,
        vision_config=vision_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    model = model_class(config)
    # 28×28-pixel cells (patch 14 × merge 2) become one token each: 4 to 16 tokens.
    pixels = {"shortest_edge": 4 * 28 * 28, "longest_edge": 16 * 28 * 28}
    processor = processor_class(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=pixels),
        chat_template=_QWEN2_VL_CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


# Vision tower fields shared by the tiny Qwen-VL checkpoints: real patching
# (14-pixel patches, 2×2 merge, 2 frames), two narrow blocks.
_TINY_QWEN_VISION = {
    "depth": 2,
    "num_heads": 2,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}


def _build_qwen2_vl(out_dir: Path) -> None:
    """Writes a tiny Qwen2-VL (Qwen2VLForConditionalGeneration) checkpoint to ``out_dir``."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    vision = dict(_TINY_QWEN_VISION, embed_dim=32, mlp_ratio=2)
    vision["hidden_size"] = _TINY_TEXT_HIDDEN  # the merger projects into the decoder
    _build_qwen_vl(
        out_dir, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, vision
    )


def _build_qwen2_5_vl(out_dir: Path) -> None:
    """Writes a tiny Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration) checkpoint."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )

    # Window attention over 56-pixel windows, the second block attends fully,
    # as every fourth block of the real tower does.
    vision = dict(
        _TINY_QWEN_VISION,
        hidden_size=32,
        intermediate_size=64,
        window_size=56,
        fullatt_block_indexes=[1],
        out_hidden_size=_TINY_TEXT_HIDDEN,
    )
    _build_qwen_vl(
        out_dir,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        vision,
    )


def _rescale_conv_tower(tower: torch.nn.Module) -> None:
    """Re-initialises a random conv vision tower so its output depends on the image.

    transformers initialises every timm conv with N(0, 0.02); through FastViT's
    dozen stacked convs that shrinks the signal by ~10^-4 per stage, so every
    image gave the same features (to 1e-20) and the tiny FastVLM was blind.
    He-normal convs keep the activation scale, and layer scales of 0.1 (timm:
    1e-5) let the residual blocks contribute.
    """
    for module in tower.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    for name, param in tower.named_parameters():
        if name.endswith("layer_scale.gamma"):
            torch.nn.init.constant_(param, 0.1)


def _build_fast_vlm(out_dir: Path) -> None:
    """Writes a tiny FastVLM (FastVlmForConditionalGeneration) checkpoint to ``out_dir``."""
    from transformers import (
        CLIPImageProcessor,
        FastVlmConfig,
        FastVlmForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _qwen2_tokenizer(padding_side="right", extra_special_tokens=("<image>",))
    text = _tiny_qwen2_text_config(_padded_vocab_size(tokenizer), tokenizer)
    text["model_type"] = "qwen2"
    # FastViT-HD ("fastvit_mci3") shrunk: five stages of one block each, the
    # last two attention stages 32 wide (timm's attention head_dim). The stem
    # (4×) and four downsamples give FastViT-HD's 64× reduction, and the final
    # conv doubles the width, so the projector sees 2 × 64 channels.
    fastvit_args = {
        "inference_mode": True,
        "layers": [1, 1, 1, 1, 1],
        "embed_dims": [8, 16, 32, 32, 64],
        "mlp_ratios": [2, 2, 2, 2, 2],
        "downsamples": [False, True, True, True, True],
    }
    image_side = 192  # 192 / 64 = 3 → 9 image tokens
    config = FastVlmConfig(
        text_config=text,
        vision_config={
            "model_type": "timm_wrapper",
            "architecture": "fastvit_mci3",
            "do_pooling": False,
            "global_pool": "avg",
            "hidden_size": 2 * fastvit_args["embed_dims"][-1],
            "initializer_range": 0.02,
            "model_args": fastvit_args,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_side // 64) ** 2,
        tie_word_embeddings=True,
    )
    model = FastVlmForConditionalGeneration(config)
    _rescale_conv_tower(model.model.vision_tower)
    # FastVLM feeds the vision tower [0, 1] pixels (mean 0, std 1).
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_side},
        crop_size={"height": image_side, "width": image_side},
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=64,  # effective patch of FastViT-HD (2^6)
        vision_feature_select_strategy="full",
        chat_template=_FAST_VLM_CHAT_TEMPLATE,
        image_token="<image>",
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def _tiny_vit_config(image_size: int, patch_size: int, **extra: Any) -> dict:
    """A 2-layer, 32-wide ViT vision config (CLIP, SigLIP, Idefics3) plus family fields."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch_size,
        **extra,
    }


def _build_llava(out_dir: Path) -> None:
    """Writes a tiny LLaVA (LlavaForConditionalGeneration) checkpoint to ``out_dir``.

    LLaVA-1.5's layout (CLIP ViT, "default" feature strategy dropping CLS, a
    two-layer projector) on a Qwen2 decoder, as in llava-interleave-qwen.
    """
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _qwen2_tokenizer(padding_side="left", extra_special_tokens=("<image>",))
    text = _tiny_qwen2_text_config(_padded_vocab_size(tokenizer), tokenizer)
    text["model_type"] = "qwen2"
    image_side, patch = 56, 14  # 4 × 4 patches (+ CLS, dropped) → 16 image tokens
    config = LlavaConfig(
        text_config=text,
        vision_config=_tiny_vit_config(
            image_side, patch, model_type="clip_vision_model", projection_dim=32
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_side // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_side},
        crop_size={"height": image_side, "width": image_side},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, removed by "default"
        chat_template=_FAST_VLM_CHAT_TEMPLATE,
        image_token="<image>",
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


# Renders a conversation the way SmolVLM-Instruct's template does: no system
# turn, "User:" (no space before an image), the parts in content order, each
# turn closed by <end_of_utterance>, and "Assistant:" as the generation prompt.
_SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is not string and message['content'][0]['type'] == 'image' %}"
    ":{% else %}: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<image>{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

# Tokens Idefics3Processor looks up: the image placeholder and its frame, the
# global-image tag and the tile tags of up to 6 × 6 tiles.
_IDEFICS3_SPECIAL_TOKENS = (
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)),
)


def _build_idefics3(out_dir: Path) -> None:
    """Writes a tiny Idefics3 (SmolVLM-256M/500M layout) checkpoint to ``out_dir``.

    SmolVLM's layout shrunk: a SigLIP-style tower on square tiles, pixel
    shuffle by ``scale_factor``, a Llama decoder. The image processor splits an
    image into up to 2 × 2 tiles of 32 pixels plus a global view, 4 tokens
    each, so images of different shapes give different token counts (a
    128×96 image 20, a 70×150 one 12) and a batch pads whole tiles, which
    the model drops as all-zero images.
    """
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tokenizer = _qwen2_tokenizer(
        padding_side="right", extra_special_tokens=_IDEFICS3_SPECIAL_TOKENS
    )
    tokenizer.eos_token = "<end_of_utterance>"
    text = _tiny_qwen2_text_config(_padded_vocab_size(tokenizer), tokenizer)
    text.update(model_type="llama", rope_theta=100_000.0, rms_norm_eps=1e-5)
    text["eos_token_id"] = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    tile, patch, scale_factor = 32, 8, 2  # (32 / 8)^2 patches / 2^2 = 4 tokens per tile
    image_seq_len = (tile // patch) ** 2 // scale_factor**2
    config = Idefics3Config(
        text_config=text,
        vision_config=_tiny_vit_config(tile, patch),
        scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=True,
    )
    model = Idefics3ForConditionalGeneration(config)
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 2 * tile},
        max_image_size={"longest_edge": tile},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=_SMOLVLM_CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


# Attention head width of the Gemma-based tiny decoders. Gemma configs state
# head_dim explicitly (it is not hidden_size / heads in the real models); 16
# as in the other tiny decoders (64 wide, 4 heads).
_TINY_GEMMA_HEAD_DIM = 16


def _tiny_gemma_text_config(vocab_size: int, tokenizer) -> dict:
    """Text-decoder fields shared by the Gemma-based tiny checkpoints."""
    return {
        "vocab_size": vocab_size,
        **_TINY_DECODER_SHAPE,
        "head_dim": _TINY_GEMMA_HEAD_DIM,
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _build_paligemma(out_dir: Path) -> None:
    """Writes a tiny PaliGemma 2 (PaliGemmaForConditionalGeneration) checkpoint.

    PaliGemma 2's layout: a SigLIP tower whose patches all become image
    tokens, a linear projector, a Gemma 2 decoder (alternating sliding and
    global attention, logit soft-capping). No chat template: the processor
    writes ``<image>`` × n, ``<bos>``, the prompt and a newline, and the whole
    prompt is one bidirectional prefix.
    """
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    tokenizer = _gemma_tokenizer(padding_side="left")
    image_side, patch = 32, 8  # (32 / 8)^2 = 16 image tokens
    image_processor = SiglipImageProcessor(
        size={"height": image_side, "width": image_side},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    # PaliGemmaProcessor reads the token count from the image processor.
    image_processor.image_seq_length = (image_side // patch) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    # The processor has added <image> and the <loc....> / <seg...> detection
    # tokens to the tokenizer; the embeddings are sized after it did.
    text = _tiny_gemma_text_config(_padded_vocab_size(tokenizer), tokenizer)
    text.update(
        model_type="gemma2",
        sliding_window=512,  # longer than any test prompt, as 4096 is for real prompts
        query_pre_attn_scalar=_TINY_GEMMA_HEAD_DIM,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    )
    config = PaliGemmaConfig(
        text_config=text,
        vision_config=_tiny_vit_config(
            image_side, patch, model_type="siglip_vision_model", vision_use_head=False
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=_TINY_TEXT_HIDDEN,
        hidden_size=_TINY_TEXT_HIDDEN,
        vocab_size=text["vocab_size"],
        tie_word_embeddings=True,
    )
    model = PaliGemmaForConditionalGeneration(config)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


# Renders a conversation the way Gemma 3's instruction template does: <bos>,
# a system message folded into the first user turn, "model" for the
# assistant role, <start_of_image> for each image in content order (the
# processor expands it), text parts trimmed.
_GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_prefix = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] %}"
    "{% set first_prefix = first_prefix + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set first_prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if loop.first %}{{ first_prefix }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _build_gemma3(out_dir: Path) -> None:
    """Writes a tiny Gemma 3 (Gemma3ForConditionalGeneration) checkpoint to ``out_dir``.

    Gemma 3's layout: a SigLIP tower on a fixed square resolution, average
    pooling of its patch grid to ``mm_tokens_per_image`` soft tokens framed by
    ``<start_of_image>`` / ``<end_of_image>``, and a Gemma 3 decoder with
    sliding-window and global layers; image tokens attend to each other
    bidirectionally, everything else causally.
    """
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    tokenizer = _gemma_tokenizer(
        padding_side="left",
        extra_special_tokens=("<start_of_turn>", "<end_of_turn>"),
        named_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    image_side, patch, tokens_per_image = 64, 8, 16  # 8 × 8 patches pooled to 4 × 4
    text = _tiny_gemma_text_config(_padded_vocab_size(tokenizer), tokenizer)
    text.update(
        sliding_window=512,  # longer than any test prompt, as 1024 is for real prompts
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        query_pre_attn_scalar=_TINY_GEMMA_HEAD_DIM,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=_tiny_vit_config(
            image_side, patch, model_type="siglip_vision_model", vision_use_head=False
        ),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=True,
    )
    model = Gemma3ForConditionalGeneration(config)
    # transformers zero-initialises the soft-token projection (a trained
    # checkpoint overwrites it), which would make every image feature 0 and
    # the tiny model blind; give it the scale of the other projections.
    projection = model.model.multi_modal_projector.mm_input_projection_weight
    torch.nn.init.normal_(projection, std=config.initializer_range)
    image_processor = Gemma3ImageProcessor(
        size={"height": image_side, "width": image_side},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=tokens_per_image,
        chat_template=_GEMMA3_CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


# family name -> builder writing the checkpoint into an empty directory.
TINY_BUILDERS: dict[str, Callable[[Path], None]] = {
    "qwen2_vl": _build_qwen2_vl,
    "qwen2_5_vl": _build_qwen2_5_vl,
    "fast_vlm": _build_fast_vlm,
    "llava": _build_llava,
    "idefics3": _build_idefics3,
    "paligemma": _build_paligemma,
    "gemma3": _build_gemma3,
}


def tiny_families() -> tuple[str, ...]:
    """Families ``build_tiny_checkpoint`` can build."""
    return tuple(sorted(TINY_BUILDERS))


def _default_cache_dir() -> Path:
    root = os.environ.get("PROBING_CACHE_DIR") or os.path.join(Path.home(), ".cache", "probing")
    return Path(root) / "tiny"


def build_tiny_checkpoint(family: str, cache_dir: str | None = None) -> str:
    """Returns the directory of the tiny ``family`` checkpoint, building it if needed.

    Args:
      family: one of :func:`tiny_families` (``"qwen2_vl"``, ``"qwen2_5_vl"``,
        ``"fast_vlm"``, ``"llava"``, ``"idefics3"``, ``"paligemma"``, ``"gemma3"``).
      cache_dir: where checkpoints are kept; default ``$PROBING_CACHE_DIR/tiny`` or
        ``~/.cache/probing/tiny``.

    Returns:
      A local directory that ``AutoProcessor.from_pretrained`` and
      ``AutoModelForImageTextToText.from_pretrained`` load.
    """
    if family not in TINY_BUILDERS:
        raise ValueError(
            f"No tiny checkpoint for family {family!r}; known tiny families: "
            f"{', '.join(tiny_families())}. Add a builder to TINY_BUILDERS in {__file__}."
        )
    root = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    key = f"{family}-v{TINY_VERSION}-transformers{transformers.__version__}"
    target = root / key
    if (target / "config.json").is_file():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        # Weights come from the global torch RNG; fork it so a build neither
        # depends on nor disturbs the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_BUILD_SEED)
            TINY_BUILDERS[family](staging)
        try:
            # Atomic publish: a concurrent builder that finished first wins and
            # this copy is discarded.
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)
