"""The model's own yes/no answer to a caption question: the behavioural baseline of a probe.

A caption task asks the model whether a caption is true of the image ("...
Is this right?"). Besides the hidden states, extraction records what the
model itself answers: at the answer position (the last real token, whose
final-normed state the "last" pooling of the top layer holds) the LM head
gives next-token logits, and

    answer_margin = logsumexp(logits[yes spellings]) - logsumexp(logits[no spellings])

is positive when the model says yes. The spellings are those of "Yes", "yes",
" Yes", " yes" (and the same for No) that the tokenizer encodes as one token,
so a chat model starting its turn with "Yes" and a base model continuing
"Answer:" with " yes" are both read; a tokenizer with no one-token spelling
falls back to the first token of "Yes" and of "No". The report scores the
margin's sign against the labels ("is the probe reading more than the model
says?", probing.reporting.behaviour).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

# Tasks whose prompt is a yes/no question about the image.
YES_NO_TASKS = ("caption",)
YES_WORDS = ("Yes", "yes", " Yes", " yes")
NO_WORDS = ("No", "no", " No", " no")


@dataclasses.dataclass(frozen=True)
class YesNoTokens:
    """The token ids read as "yes" and as "no", with the text each stands for."""

    yes: tuple[tuple[str, int], ...]
    no: tuple[tuple[str, int], ...]

    @property
    def yes_ids(self) -> list[int]:
        return [token for _, token in self.yes]

    @property
    def no_ids(self) -> list[int]:
        return [token for _, token in self.no]

    def as_json(self) -> dict[str, Any]:
        """manifest.json's "answer_tokens": {"yes": [[text, id], ...], "no": [...]}."""
        return {"yes": [list(pair) for pair in self.yes], "no": [list(pair) for pair in self.no]}


def _single_tokens(tokenizer, words: tuple[str, ...]) -> list[tuple[str, int]]:
    found: dict[int, str] = {}
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] not in found:
            found[ids[0]] = word
    return [(word, token) for token, word in found.items()]


def yes_no_tokens(tokenizer) -> YesNoTokens | None:
    """The answer tokens of ``tokenizer``; None if "yes" and "no" cannot be told apart."""
    yes, no = _single_tokens(tokenizer, YES_WORDS), _single_tokens(tokenizer, NO_WORDS)
    if not yes or not no:
        # No one-token spelling: the first token the model would emit for each.
        yes = [(YES_WORDS[0], tokenizer(YES_WORDS[0], add_special_tokens=False)["input_ids"][0])]
        no = [(NO_WORDS[0], tokenizer(NO_WORDS[0], add_special_tokens=False)["input_ids"][0])]
    if {t for _, t in yes} & {t for _, t in no}:
        return None
    return YesNoTokens(tuple(yes), tuple(no))


def answer_tokens_for(task: str, tokenizer) -> YesNoTokens | None:
    """The answer tokens to record for a task: None for tasks that ask no yes/no question."""
    return yes_no_tokens(tokenizer) if task in YES_NO_TASKS else None


def answer_margins(logits: torch.Tensor, tokens: YesNoTokens) -> torch.Tensor:
    """[B] logsumexp of the yes logits minus that of the no logits, from [B, V] logits."""
    logits = logits.float()
    yes = torch.logsumexp(logits[:, tokens.yes_ids], dim=-1)
    no = torch.logsumexp(logits[:, tokens.no_ids], dim=-1)
    return yes - no
