"""Token sequences for training: chat-rendered questions with answers and per-token targets.

A sequence is exactly what the processor would give for the same image and
prompt (the family adapter's chat rendering, the image placeholder expanded
to one token per image feature), followed by the answer and ``<|im_end|>``.
Text is tokenised once per distinct prompt, so a training step costs no
tokenizer or processor call. Besides the next-token labels of the answer,
each sequence carries two deep-supervision targets:

* ``word``: at the last token of every checkable caption word, whether the
  word is true of the image (``world.word_truths``), else -1;
* ``presence``: which colours, shapes and background the image holds, scored
  at every text position after the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probing.data.synthetic_coco import Scene
from probing.models.trained import world

IGNORE = -100


@dataclass
class Sequence:
    ids: list[int]
    labels: list[int]  # next-token targets at the answer, IGNORE elsewhere
    word: list[float]  # 1 / 0 word truth, -1 where unscored
    image_end: int  # index of the first position after the image tokens


class SequenceBuilder:
    """Renders (prompt, answer) pairs of one family into token ids, with caching."""

    def __init__(self, adapter, processor):
        self.adapter = adapter
        self.tokenizer = processor.tokenizer
        self.image_token = processor.image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.end = self.tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
        self._prompts: dict[str, tuple[list[int], list[int], str, list[tuple[int, int]]]] = {}
        self.answer_ids = {
            answer: self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            for answer in (world.YES, world.NO)
        }
        for answer, ids in self.answer_ids.items():
            if len(ids) != 1:
                raise ValueError(f"answer {answer!r} must be one token of the trained tokenizer")

    def _prompt(self, prompt: str):
        """(ids before the image, ids after it, the text after it, offsets of those ids)."""
        if prompt not in self._prompts:
            (rendered,) = self.adapter.render_prompts([prompt], with_image=True)
            before, after = rendered.split(self.image_token)
            encoded = self.tokenizer(after, add_special_tokens=False, return_offsets_mapping=True)
            self._prompts[prompt] = (
                self.tokenizer(before, add_special_tokens=False)["input_ids"],
                encoded["input_ids"],
                after,
                [tuple(span) for span in encoded["offset_mapping"]],
            )
        return self._prompts[prompt]

    def build(
        self, num_image_tokens: int, prompt: str, answer: str, truth_of: Scene | None = None
    ) -> Sequence:
        """The sequence of one example; word targets judged against ``truth_of``."""
        before, after, after_text, offsets = self._prompt(prompt)
        answer_ids = self.answer_ids.get(answer)
        if answer_ids is None:
            answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        target = answer_ids + self.end
        image_end = len(before) + num_image_tokens
        ids = before + [self.image_token_id] * num_image_tokens + after + target
        labels = [IGNORE] * (len(ids) - len(target)) + target
        word = [-1.0] * len(ids)
        if truth_of is not None:
            shift = after_text.find(prompt)
            for start, end, truth in world.word_truths(prompt, truth_of):
                # The word's last token: the last one overlapping its characters.
                covering = [
                    i for i, (a, b) in enumerate(offsets) if a < end + shift and b > start + shift
                ]
                word[image_end + covering[-1]] = float(truth)
        return Sequence(ids, labels, word, image_end)


def collate(
    sequences: list[Sequence], presence: np.ndarray, pad_id: int, padding_side: str
) -> dict[str, torch.Tensor]:
    """Pads a batch on ``padding_side``; ``presence`` is [B, PRESENCE_SIZE]."""
    length = max(len(s.ids) for s in sequences)
    batch = len(sequences)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE, dtype=torch.long)
    word = torch.full((batch, length), -1.0)
    mask = torch.zeros((batch, length), dtype=torch.long)
    after_image = torch.zeros((batch, length), dtype=torch.bool)
    for row, s in enumerate(sequences):
        n = len(s.ids)
        start = length - n if padding_side == "left" else 0
        ids[row, start : start + n] = torch.tensor(s.ids)
        labels[row, start : start + n] = torch.tensor(s.labels)
        word[row, start : start + n] = torch.tensor(s.word)
        mask[row, start : start + n] = 1
        after_image[row, start + s.image_end : start + n] = True
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "word": word,
        "after_image": after_image,
        "presence": torch.as_tensor(presence),
    }
