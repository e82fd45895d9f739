"""Builders of the tiny checkpoints whose decoder uses Qwen2's tokenizer.

Qwen2-VL, Qwen2.5-VL, FastVLM and LLaVA (Qwen2 decoders) and Idefics3 /
SmolVLM (a Llama decoder); each writes a checkpoint into an empty directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from probing.models.tiny.chat_templates import (
    FAST_VLM_CHAT_TEMPLATE,
    QWEN2_VL_CHAT_TEMPLATE,
    SMOLVLM_CHAT_TEMPLATE,
)
from probing.models.tiny.common import TINY_TEXT_HIDDEN, tiny_qwen2_text_config, tiny_vit_config
from probing.models.tiny.vocab import padded_vocab_size, qwen2_tokenizer


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
    tokenizer = qwen2_tokenizer(padding_side="left")
    text = tiny_qwen2_text_config(padded_vocab_size(tokenizer), tokenizer)
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
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
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


def build_qwen2_vl(out_dir: Path) -> None:
    """Writes a tiny Qwen2-VL (Qwen2VLForConditionalGeneration) checkpoint to ``out_dir``."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    vision = dict(_TINY_QWEN_VISION, embed_dim=32, mlp_ratio=2)
    vision["hidden_size"] = TINY_TEXT_HIDDEN  # the merger projects into the decoder
    _build_qwen_vl(
        out_dir, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, vision
    )


def build_qwen2_5_vl(out_dir: Path) -> None:
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
        out_hidden_size=TINY_TEXT_HIDDEN,
    )
    _build_qwen_vl(
        out_dir,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        vision,
    )


def rescale_conv_tower(tower: torch.nn.Module) -> None:
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


def build_fast_vlm(out_dir: Path) -> None:
    """Writes a tiny FastVLM (FastVlmForConditionalGeneration) checkpoint to ``out_dir``."""
    from transformers import (
        CLIPImageProcessor,
        FastVlmConfig,
        FastVlmForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = qwen2_tokenizer(padding_side="right", extra_special_tokens=("<image>",))
    text = tiny_qwen2_text_config(padded_vocab_size(tokenizer), tokenizer)
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
    rescale_conv_tower(model.model.vision_tower)
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
        chat_template=FAST_VLM_CHAT_TEMPLATE,
        image_token="<image>",
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def build_llava(out_dir: Path) -> None:
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

    tokenizer = qwen2_tokenizer(padding_side="left", extra_special_tokens=("<image>",))
    text = tiny_qwen2_text_config(padded_vocab_size(tokenizer), tokenizer)
    text["model_type"] = "qwen2"
    image_side, patch = 56, 14  # 4 × 4 patches (+ CLS, dropped) → 16 image tokens
    config = LlavaConfig(
        text_config=text,
        vision_config=tiny_vit_config(
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
        chat_template=FAST_VLM_CHAT_TEMPLATE,
        image_token="<image>",
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


# Tokens Idefics3Processor looks up: the image placeholder and its frame, the
# global-image tag and the tile tags of up to 6 × 6 tiles.
_IDEFICS3_SPECIAL_TOKENS = (
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)),
)


def build_idefics3(out_dir: Path) -> None:
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

    tokenizer = qwen2_tokenizer(padding_side="right", extra_special_tokens=_IDEFICS3_SPECIAL_TOKENS)
    tokenizer.eos_token = "<end_of_utterance>"
    text = tiny_qwen2_text_config(padded_vocab_size(tokenizer), tokenizer)
    text.update(model_type="llama", rope_theta=100_000.0, rms_norm_eps=1e-5)
    text["eos_token_id"] = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    tile, patch, scale_factor = 32, 8, 2  # (32 / 8)^2 patches / 2^2 = 4 tokens per tile
    image_seq_len = (tile // patch) ** 2 // scale_factor**2
    config = Idefics3Config(
        text_config=text,
        vision_config=tiny_vit_config(tile, patch),
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
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
