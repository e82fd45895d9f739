"""Builders of the tiny checkpoints whose decoder uses Gemma's tokenizer.

PaliGemma 2 (a Gemma 2 decoder) and Gemma 3; each writes a checkpoint into
an empty directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from probing.models.tiny.chat_templates import GEMMA3_CHAT_TEMPLATE
from probing.models.tiny.common import (
    TINY_GEMMA_HEAD_DIM,
    TINY_TEXT_HIDDEN,
    tiny_gemma_text_config,
    tiny_vit_config,
)
from probing.models.tiny.vocab import gemma_tokenizer, padded_vocab_size


def build_paligemma(out_dir: Path) -> None:
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

    tokenizer = gemma_tokenizer(padding_side="left")
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
    text = tiny_gemma_text_config(padded_vocab_size(tokenizer), tokenizer)
    text.update(
        model_type="gemma2",
        sliding_window=512,  # longer than any test prompt, as 4096 is for real prompts
        query_pre_attn_scalar=TINY_GEMMA_HEAD_DIM,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    )
    config = PaliGemmaConfig(
        text_config=text,
        vision_config=tiny_vit_config(
            image_side, patch, model_type="siglip_vision_model", vision_use_head=False
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=TINY_TEXT_HIDDEN,
        hidden_size=TINY_TEXT_HIDDEN,
        vocab_size=text["vocab_size"],
        tie_word_embeddings=True,
    )
    model = PaliGemmaForConditionalGeneration(config)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def build_gemma3(out_dir: Path) -> None:
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

    tokenizer = gemma_tokenizer(
        padding_side="left",
        extra_special_tokens=("<start_of_turn>", "<end_of_turn>"),
        named_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    image_side, patch, tokens_per_image = 64, 8, 16  # 8 × 8 patches pooled to 4 × 4
    text = tiny_gemma_text_config(padded_vocab_size(tokenizer), tokenizer)
    text.update(
        sliding_window=512,  # longer than any test prompt, as 1024 is for real prompts
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        query_pre_attn_scalar=TINY_GEMMA_HEAD_DIM,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=tiny_vit_config(
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
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
