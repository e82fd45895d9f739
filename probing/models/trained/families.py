"""The architectures the embedded models are trained in, and how training reaches their towers.

Each family builds the untrained checkpoint (the real model class with a
6-layer decoder, the real processor, a tokenizer trained on the world's
text) and says which part of the vision tower each training stage freezes,
so that frozen outputs are computed once per image instead of every step.
Stage B feeds image features to the model through transformers'
``mm_encoder_outputs``, the path a forward takes with precomputed features.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from probing.models.tiny.chat_templates import FAST_VLM_CHAT_TEMPLATE, QWEN2_VL_CHAT_TEMPLATE
from probing.models.tiny.common import tiny_qwen2_text_config
from probing.models.tiny.vocab import padded_vocab_size, qwen2_tokenizer

# Decoder depth of every trained checkpoint: enough layers for a depth profile.
NUM_DECODER_LAYERS = 6
# BPE size: the world has about 120 distinct words, each a single token.
VOCAB_SIZE = 512


def reinit_linears(module: torch.nn.Module) -> None:
    """Draws every linear weight of ``module`` from N(0, 1 / fan_in) (global torch RNG).

    transformers initialises with N(0, 0.02²), made for widths in the
    thousands. At widths 32-128 that shrinks every attention score to ~0 and
    every projection's output by 0.02 · sqrt(width): the decoder sat on a
    plateau for 500+ steps before attention found the image tokens, and
    the FastViT projector's output was ~1e-4 and never learnt. 1 / fan_in
    keeps activations at unit scale (the decoder finds the image in ~200 steps).
    """
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5)


@dataclass
class PreparedImage:
    """One image as the processor hands it to the model, plus where its tokens sit."""

    pixels: torch.Tensor  # the processor's pixel_values for this image alone
    grid_thw: torch.Tensor | None  # Qwen2-VL's [t, h, w] patch grid; None elsewhere
    cells: tuple[int, int]  # image tokens as (rows, cols), row-major
    size: tuple[int, int]  # (width, height) the image is resized to


class TrainedFamily:
    """How to build and train one family; subclasses fill in the tower specifics."""

    name = ""
    # Stage-A (vision proxy) steps of the recipe.
    steps_a = 600
    # Further TrainSettings of the recipe (train_tiny applies them).
    settings: ClassVar[dict] = {}
    padding_side = "left"
    extra_special_tokens: tuple[str, ...] = ()

    def tokenizer(self, corpus: Iterable[str]):
        return qwen2_tokenizer(
            self.padding_side, self.extra_special_tokens, corpus=corpus, vocab_size=VOCAB_SIZE
        )

    def text_config(self, tokenizer) -> dict:
        text = tiny_qwen2_text_config(padded_vocab_size(tokenizer), tokenizer)
        text["num_hidden_layers"] = NUM_DECODER_LAYERS
        return text

    def build(self, corpus: Iterable[str]) -> tuple[torch.nn.Module, Any]:
        """The untrained model (weights from the global torch RNG) and its processor."""
        raise NotImplementedError

    def prepare(self, processor, image: Image.Image) -> PreparedImage:
        raise NotImplementedError

    # Stage A trains the vision tower (from `frozen_a` on) and the projector.
    def frozen_a(self, model, images: list[PreparedImage]) -> list[torch.Tensor]:
        raise NotImplementedError

    def params_a(self, model) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def tokens_a(self, model, cached: list[torch.Tensor], images: list[PreparedImage]):
        """[sum of tokens, hidden] image features (projected) of a batch."""
        raise NotImplementedError

    # Stage B freezes the tower, trains the projector and the decoder.
    def frozen_b(self, model, images: list[PreparedImage]) -> list[torch.Tensor]:
        raise NotImplementedError

    def projector(self, model) -> torch.nn.Module:
        raise NotImplementedError

    def model_inputs(
        self,
        model,
        input_ids: torch.Tensor,
        cached: list[torch.Tensor],
        images: list[PreparedImage],
    ) -> dict[str, Any]:
        """Forward kwargs (besides input_ids / attention_mask) with projected features."""
        raise NotImplementedError


class Qwen2VL(TrainedFamily):
    """Qwen2VLForConditionalGeneration: ViT on 7-pixel patches, 4×4 merger, M-RoPE."""

    name = "qwen2_vl"
    # Stage A reads every object's category and draws fresh images each step:
    # on 3000 fixed images the tower carried less over to new ones (ROC-AUC
    # 0.771 against 0.832, TrainSettings).
    steps_a = 1200
    settings: ClassVar[dict] = {"object_weight": 2.0, "fresh_images_a": True}
    # The ViT: real patching (2 frames), narrow blocks. Any patch_size ×
    # spatial_merge_size of 28 keeps the 28-pixel cells; 7 × 4 (16 patches per
    # token, not the real 14 × 2) made categories more readable from the mean
    # image token (ROC-AUC 0.905 against 0.832 with 14 × 2, measured on a
    # world with accents over half of each object; TrainSettings).
    vision: ClassVar[dict] = {
        "depth": 2,
        "embed_dim": 32,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 7,
        "spatial_merge_size": 4,
        "temporal_patch_size": 2,
    }
    max_image_tokens = 16

    def build(self, corpus):
        from transformers import (
            Qwen2VLConfig,
            Qwen2VLForConditionalGeneration,
            Qwen2VLImageProcessor,
            Qwen2VLProcessor,
            Qwen2VLVideoProcessor,
        )

        tokenizer = self.tokenizer(corpus)
        text = self.text_config(tokenizer)
        # head_dim 16: M-RoPE splits its 8 frequencies over (t, h, w).
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10_000.0,
            "mrope_section": [2, 3, 3],
        }
        vision = dict(self.vision, hidden_size=text["hidden_size"])
        ids = tokenizer.convert_tokens_to_ids
        config = Qwen2VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=True,
        )
        # 28×28-pixel cells become one token each: 4 to max_image_tokens per image.
        cell = self.vision["patch_size"] * self.vision["spatial_merge_size"]
        pixels = {"shortest_edge": 4 * cell * cell, "longest_edge": self.max_image_tokens * cell**2}
        processor = Qwen2VLProcessor(
            image_processor=Qwen2VLImageProcessor(
                size=pixels,
                patch_size=self.vision["patch_size"],
                merge_size=self.vision["spatial_merge_size"],
            ),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(size=pixels),
            chat_template=QWEN2_VL_CHAT_TEMPLATE,
        )
        model = Qwen2VLForConditionalGeneration(config)
        reinit_linears(model.model.visual)
        reinit_linears(model.model.language_model)
        return model, processor

    def prepare(self, processor, image):
        out = processor.image_processor(image, return_tensors="pt")
        grid = out["image_grid_thw"][0]
        _, rows, cols = (int(v) for v in grid)
        patch = processor.image_processor.patch_size
        merge = processor.image_processor.merge_size
        return PreparedImage(
            out["pixel_values"], grid, (rows // merge, cols // merge), (cols * patch, rows * patch)
        )

    def frozen_a(self, model, images):
        return [image.pixels for image in images]  # the whole tower trains

    def params_a(self, model):
        return list(model.model.visual.parameters())

    def tokens_a(self, model, cached, images):
        grids = torch.stack([image.grid_thw for image in images])
        return model.model.visual(torch.cat(cached), grid_thw=grids).pooler_output

    def frozen_b(self, model, images):
        grids = torch.stack([image.grid_thw for image in images])
        with torch.no_grad():
            pixels = torch.cat([image.pixels for image in images])
            hidden = model.model.visual(pixels, grid_thw=grids).last_hidden_state
        return list(hidden.split(grids.prod(-1).tolist()))

    def projector(self, model):
        return model.model.visual.merger

    def model_inputs(self, model, input_ids, cached, images):
        merged = self.projector(model)(torch.cat(cached))
        sizes = [
            int(image.grid_thw.prod()) // self.vision["spatial_merge_size"] ** 2 for image in images
        ]
        features = BaseModelOutputWithPooling(pooler_output=list(merged.split(sizes)))
        image_token = model.config.image_token_id
        return {
            "mm_encoder_outputs": {"image": features},
            "image_grid_thw": torch.stack([image.grid_thw for image in images]),
            # text 0, image 1: what the processor returns, needed for M-RoPE.
            "mm_token_type_ids": (input_ids == image_token).long(),
        }


# Input side of the FastVLM tower: 192 / 64 = 3, so 3 × 3 image tokens.
_FAST_VLM_SIDE = 192
# FastViT stages run once, frozen, in stage A: the stem and the first two
# stages hold most of the tower's compute (48×48 and 24×24 maps), and random
# convolutions there keep colour and outline at 8-pixel resolution.
_FAST_VLM_FROZEN_STAGES = 2


class FastVlm(TrainedFamily):
    """FastVlmForConditionalGeneration: FastViT-HD (timm) tower, 2-layer projector."""

    name = "fast_vlm"
    # Its tower learns more slowly than Qwen2-VL's ViT (and its steps are cheaper).
    steps_a = 1200
    # FastViT stages run once, frozen, in stage A after the stem (0: only the stem).
    frozen_stages = _FAST_VLM_FROZEN_STAGES
    # The shrunk FastViT-HD (fastvit_mci3): five stages of one block, 64×
    # reduction, the final conv doubling the width.
    fastvit: ClassVar[dict] = {
        "inference_mode": True,
        "layers": [1, 1, 1, 1, 1],
        "embed_dims": [8, 16, 32, 32, 64],
        "mlp_ratios": [2, 2, 2, 2, 2],
        "downsamples": [False, True, True, True, True],
    }
    padding_side = "right"
    extra_special_tokens = ("<image>",)

    def build(self, corpus):
        from transformers import (
            CLIPImageProcessor,
            FastVlmConfig,
            FastVlmForConditionalGeneration,
            LlavaProcessor,
        )

        from probing.models.tiny.builders_qwen2 import rescale_conv_tower

        tokenizer = self.tokenizer(corpus)
        text = self.text_config(tokenizer)
        text["model_type"] = "qwen2"
        fastvit_args = dict(self.fastvit)
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
            image_seq_length=(_FAST_VLM_SIDE // 64) ** 2,
            tie_word_embeddings=True,
        )
        model = FastVlmForConditionalGeneration(config)
        rescale_conv_tower(model.model.vision_tower)
        reinit_linears(model.model.multi_modal_projector)
        reinit_linears(model.model.language_model)
        # The whole image, squeezed to a square (no centre crop that would cut
        # off shapes near the left and right edges); [0, 1] pixels as FastVLM.
        image_processor = CLIPImageProcessor(
            size={"height": _FAST_VLM_SIDE, "width": _FAST_VLM_SIDE},
            do_center_crop=False,
            image_mean=[0.0, 0.0, 0.0],
            image_std=[1.0, 1.0, 1.0],
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=64,
            vision_feature_select_strategy="full",
            chat_template=FAST_VLM_CHAT_TEMPLATE,
            image_token="<image>",
        )
        return model, processor

    def prepare(self, processor, image):
        pixels = processor.image_processor(image, return_tensors="pt")["pixel_values"]
        side = pixels.shape[-1]
        return PreparedImage(pixels, None, (side // 64, side // 64), (side, side))

    def _timm(self, model):
        return model.model.vision_tower.timm_model

    def frozen_a(self, model, images):
        timm_model = self._timm(model)
        with torch.no_grad():
            x = timm_model.stem(torch.cat([image.pixels for image in images]))
            for stage in timm_model.stages[: self.frozen_stages]:
                x = stage(x)
        return list(x.unbind(0))

    def params_a(self, model):
        timm_model = self._timm(model)
        return [
            *(p for s in timm_model.stages[self.frozen_stages :] for p in s.parameters()),
            *timm_model.final_conv.parameters(),
            *model.model.multi_modal_projector.parameters(),
        ]

    def tokens_a(self, model, cached, images):
        timm_model = self._timm(model)
        x = torch.stack(cached)
        for stage in timm_model.stages[self.frozen_stages :]:
            x = stage(x)
        x = timm_model.final_conv(x).flatten(2).transpose(1, 2)
        return model.model.multi_modal_projector(x).flatten(0, 1)

    def frozen_b(self, model, images):
        with torch.no_grad():
            pixels = torch.cat([image.pixels for image in images])
            out = model.model.vision_tower(pixels).last_hidden_state
        return list(out.flatten(2).transpose(1, 2).unbind(0))

    def projector(self, model):
        return model.model.multi_modal_projector

    def model_inputs(self, model, input_ids, cached, images):
        features = self.projector(model)(torch.stack(cached))
        return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=features)}}


FAMILIES: dict[str, TrainedFamily] = {family.name: family for family in (Qwen2VL(), FastVlm())}


def trainable_families() -> tuple[str, ...]:
    """Families ``python -m probing.models.train_tiny`` can train."""
    return tuple(sorted(FAMILIES))


def family(name: str) -> TrainedFamily:
    if name not in FAMILIES:
        raise ValueError(
            f"cannot train family {name!r}; the trainable families are "
            f"{', '.join(trainable_families())}"
        )
    return FAMILIES[name]
