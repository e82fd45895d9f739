"""The build seed and model sizes shared by the tiny builders.

The decoder shape, the text-config fields of the Qwen2- and Gemma-based
decoders, and the small ViT tower of the CLIP, SigLIP and Idefics3 families.
"""

from __future__ import annotations

from typing import Any

# Seed of every random choice of a build (corpus order, weights): two builds of
# one family are identical. Deliberately not 0, the default seed of
# load_model's random_init baseline, which would otherwise reproduce these
# very weights.
BUILD_SEED = 1729

# Width of every tiny text decoder.
TINY_TEXT_HIDDEN = 64


# Decoder shape of every tiny text model: 3 layers, 64 wide, 4 heads (2 KV).
TINY_DECODER_SHAPE = {
    "hidden_size": TINY_TEXT_HIDDEN,
    "intermediate_size": 2 * TINY_TEXT_HIDDEN,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def tiny_qwen2_text_config(vocab_size: int, tokenizer) -> dict:
    """Text-decoder fields shared by the Qwen2-based tiny checkpoints."""
    return {
        "vocab_size": vocab_size,
        **TINY_DECODER_SHAPE,
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "tie_word_embeddings": True,
    }


# Attention head width of the Gemma-based tiny decoders. Gemma configs state
# head_dim explicitly (it is not hidden_size / heads in the real models); 16
# as in the other tiny decoders (64 wide, 4 heads).
TINY_GEMMA_HEAD_DIM = 16


def tiny_gemma_text_config(vocab_size: int, tokenizer) -> dict:
    """Text-decoder fields shared by the Gemma-based tiny checkpoints."""
    return {
        "vocab_size": vocab_size,
        **TINY_DECODER_SHAPE,
        "head_dim": TINY_GEMMA_HEAD_DIM,
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def tiny_vit_config(image_size: int, patch_size: int, **extra: Any) -> dict:
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
