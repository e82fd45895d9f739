"""The poolings: a table (`POOLINGS`) of functions that pool one layer's token states.

Each pools [B, T, D] states into one float32 vector per example. To add a
pooling, add one `Pooling` entry to the table: `validate_poolings` and
`pool_states` read it, and config.extract.poolings may then name it.

Names (several can be written in one pass):
  mean        mean over all real tokens (the 2025 study's default): system turn,
              template, image and prompt tokens alike. Image tokens usually
              dominate it (e.g. ~390 of ~430 for Qwen2-VL at 640x480), and in a
              causal decoder they come before the prompt, so their states cannot
              depend on it: the mean of two rows with one image and different
              prompts differs only through the few text tokens (see text_mean,
              and the per-row token counts in examples.jsonl)
  max         element-wise max over real tokens
  last        last real token (Tao et al.; what a causal LM "has read"); under
              the chat prompt format that is the template's generation prompt
              (e.g. the newline after "<|im_start|>assistant"), under "raw" the
              prompt's own last token
  last_prompt last token of the user's prompt text, whatever template follows it
              (equal to last under "raw")
  first       first real token
  image_mean  mean over image-placeholder tokens only
  text_mean   mean over real non-image tokens only
  index:K     the K-th real token (0-based; negative K counts from the end)

Every pooling reads only real tokens (attention mask 1), so results do not
depend on the padding side or on how long the other prompts of a batch are.
Sums run in float32 whatever the model dtype, because bf16 accumulation over
hundreds of image tokens loses several significant digits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch


class PoolingError(ValueError):
    """An unknown or malformed pooling name."""


# pool(states [B, T, D], real [B, T] bool, masks, K or None) -> [B, D] float32
PoolFn = Callable[[torch.Tensor, torch.Tensor, "TokenMasks", int | None], torch.Tensor]


class TokenMasks(NamedTuple):
    """[B, T] bool masks of token kinds, aligned with the states (None: not known)."""

    image: torch.Tensor | None = None  # positions carrying image features
    prompt: torch.Tensor | None = None  # the user's prompt text (ModelAdapter.prompt_spans)


@dataclasses.dataclass(frozen=True)
class Pooling:
    """One entry of the table: a pooling name and the function that computes it."""

    name: str
    pool: PoolFn  # returns float32
    needs_image: bool = False  # refused for text-only tasks
    takes_index: bool = False  # named `name:K` with an integer K

    @property
    def usage(self) -> str:
        return f"{self.name}:K" if self.takes_index else self.name


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


def _token(states: torch.Tensor, real: torch.Tensor, index: int) -> torch.Tensor:
    chosen = _token_positions(real, index)
    batch = torch.arange(states.shape[0], device=states.device)
    return states[batch, chosen].to(torch.float32)


def _mean(states, real, masks, k):
    return _masked_mean(states, real)


def _max(states, real, masks, k):
    filled = states.to(torch.float32).masked_fill(~real[:, :, None], float("-inf"))
    return filled.amax(dim=1)


def _last(states, real, masks, k):
    return _token(states, real, -1)


def _first(states, real, masks, k):
    return _token(states, real, 0)


def _index(states, real, masks, k):
    return _token(states, real, k)


def _last_prompt(states, real, masks, k):
    if masks.prompt is None:
        raise PoolingError("pooling last_prompt needs the prompt's token positions; none given")
    if bool((~(masks.prompt & real).any(dim=1)).any()):
        raise PoolingError("pooling last_prompt: a row has no prompt token")
    return _token(states, masks.prompt & real, -1)


def _image_mean(states, real, masks, k):
    if masks.image is None:
        raise PoolingError("pooling image_mean needs image tokens, but there are none")
    return _masked_mean(states, real & masks.image)


def _text_mean(states, real, masks, k):
    text = real if masks.image is None else real & ~masks.image
    return _masked_mean(states, text)


# In the order error messages list them.
POOLINGS: tuple[Pooling, ...] = (
    Pooling("mean", _mean),
    Pooling("max", _max),
    Pooling("last", _last),
    Pooling("last_prompt", _last_prompt),
    Pooling("first", _first),
    Pooling("image_mean", _image_mean, needs_image=True),
    Pooling("text_mean", _text_mean),
    Pooling("index", _index, takes_index=True),
)
_BY_NAME = {p.name: p for p in POOLINGS}


def parse_pooling(name: str) -> tuple[Pooling, int | None]:
    """The table entry of a name and its K (`index:K`), or None for names without one."""
    head, colon, argument = name.partition(":")
    entry = _BY_NAME.get(head)
    if entry is not None and entry.takes_index and colon:
        try:
            return entry, int(argument)
        except ValueError as e:
            raise PoolingError(f"pooling {name!r}: expected {entry.usage} with an integer K") from e
    if entry is None or entry.takes_index or colon:
        known = ", ".join(p.usage for p in POOLINGS)
        raise PoolingError(f"unknown pooling {name!r}; known: {known}")
    return entry, None


def validate_poolings(names: Sequence[str], with_image: bool = True) -> tuple[str, ...]:
    """Checks pooling names (and that image poolings have images to pool)."""
    if not names:
        raise PoolingError("config.extract.poolings is empty; name at least one, e.g. mean")
    if len(set(names)) != len(names):
        raise PoolingError(f"config.extract.poolings has duplicates: {list(names)}")
    for name in names:
        entry, _ = parse_pooling(name)
        if entry.needs_image and not with_image:
            raise PoolingError(f"pooling {entry.name} needs images, but the task is text-only")
    return tuple(names)


def pool_states(
    states: torch.Tensor,
    attention_mask: torch.Tensor,
    image_mask: torch.Tensor | None,
    poolings: Sequence[str],
    prompt_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Pools [B, T, D] token states into {name: [B, D] float32}.

    Args:
      states: one layer's hidden states, any float dtype.
      attention_mask: [B, T], 1 for real tokens (aligned with `states`, i.e.
        after any image-token expansion done inside the model).
      image_mask: [B, T] bool, True at image-placeholder positions, or None
        when there are no images.
      poolings: names as in the module docstring.
      prompt_mask: [B, T] bool, True at the user's prompt tokens, or None
        (then last_prompt cannot be computed).
    """
    real = attention_mask.to(torch.bool)
    masks = TokenMasks(image_mask, prompt_mask)
    out: dict[str, torch.Tensor] = {}
    for name in poolings:
        entry, index = parse_pooling(name)
        out[name] = entry.pool(states, real, masks, index)
    return out
