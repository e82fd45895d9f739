"""Masked pooling of one layer's token states into one vector per example.

Every pooling reads only real tokens (attention mask 1), so results do not
depend on the padding side or on how long the other prompts of a batch are.
Sums run in float32 whatever the model dtype, because bf16 accumulation over
hundreds of image tokens loses several significant digits.

Names (several can be written in one pass):
  mean        mean over all real tokens (the 2025 study's default)
  max         element-wise max over real tokens
  last        last real token (Tao et al.; what a causal LM "has read")
  first       first real token
  index:K     the K-th real token (0-based; negative K counts from the end)
  image_mean  mean over image-placeholder tokens only
  text_mean   mean over real non-image tokens only
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BASE_POOLINGS = ("mean", "max", "last", "first", "image_mean", "text_mean")


class PoolingError(ValueError):
    """An unknown or malformed pooling name."""


def parse_pooling(name: str) -> tuple[str, int | None]:
    """Splits `index:K` into ("index", K); other names return (name, None)."""
    if name.startswith("index:"):
        try:
            return "index", int(name.split(":", 1)[1])
        except ValueError as e:
            raise PoolingError(f"pooling {name!r}: expected index:K with an integer K") from e
    if name not in BASE_POOLINGS:
        raise PoolingError(f"unknown pooling {name!r}; known: {', '.join(BASE_POOLINGS)}, index:K")
    return name, None


def validate_poolings(names: Sequence[str], with_image: bool = True) -> tuple[str, ...]:
    """Checks pooling names (and that image poolings have images to pool)."""
    if not names:
        raise PoolingError("config.extract.poolings is empty; name at least one, e.g. mean")
    if len(set(names)) != len(names):
        raise PoolingError(f"config.extract.poolings has duplicates: {list(names)}")
    for name in names:
        kind, _ = parse_pooling(name)
        if kind == "image_mean" and not with_image:
            raise PoolingError("pooling image_mean needs images, but the task is text-only")
    return tuple(names)


def _token_positions(mask: torch.Tensor, index: int) -> torch.Tensor:
    """Sequence position of the `index`-th real token of each row ([B] long)."""
    counts = mask.sum(dim=1)
    ranks = mask.cumsum(dim=1) - 1  # rank of each real token among its row's real tokens
    wanted = torch.where(
        torch.tensor(index, device=mask.device) >= 0,
        torch.full_like(counts, index),
        counts + index,
    )
    if bool(((wanted < 0) | (wanted >= counts)).any()):
        raise PoolingError(
            f"pooling index:{index} is outside a prompt of {int(counts.min())} real tokens"
        )
    hit = mask.bool() & (ranks == wanted[:, None])
    return hit.long().argmax(dim=1)


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(torch.float32)
    total = torch.einsum("btd,bt->bd", states.to(torch.float32), weights)
    return total / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


def pool_states(
    states: torch.Tensor,
    attention_mask: torch.Tensor,
    image_mask: torch.Tensor | None,
    poolings: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Pools [B, T, D] token states into {name: [B, D] float32}.

    Args:
      states: one layer's hidden states, any float dtype.
      attention_mask: [B, T], 1 for real tokens (aligned with `states`, i.e.
        after any image-token expansion done inside the model).
      image_mask: [B, T] bool, True at image-placeholder positions, or None
        when there are no images.
      poolings: names as in the module docstring.
    """
    real = attention_mask.to(torch.bool)
    out: dict[str, torch.Tensor] = {}
    batch = torch.arange(states.shape[0], device=states.device)
    for name in poolings:
        kind, index = parse_pooling(name)
        if kind == "mean":
            out[name] = _masked_mean(states, real)
        elif kind == "max":
            filled = states.to(torch.float32).masked_fill(~real[:, :, None], float("-inf"))
            out[name] = filled.amax(dim=1)
        elif kind in ("last", "first", "index"):
            position = {"last": -1, "first": 0}.get(kind, index)
            chosen = _token_positions(real, position)
            out[name] = states[batch, chosen].to(torch.float32)
        elif kind == "image_mean":
            if image_mask is None:
                raise PoolingError("pooling image_mean needs image tokens, but there are none")
            out[name] = _masked_mean(states, real & image_mask)
        elif kind == "text_mean":
            text = real if image_mask is None else real & ~image_mask
            out[name] = _masked_mean(states, text)
    return out
