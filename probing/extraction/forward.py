"""One batch through the frozen model: the hooked forward, prefix sharing, the LM head.

`PooledForward` owns the hooks (`PooledLayerCapture`) and runs a processor
batch either plainly (one forward, `logits_to_keep=1`) or, with prefix
sharing, as one forward over the shared prefix of each prefix group (the rows
of one image) followed by one forward over every row's continuation against
the prefix's KV cache.

Prefix sharing is exact by construction: the prompts are tokenised whole, and
the prefix is the longest run of *token ids* every row of a prefix group
starts with, so no token boundary moves. The prefix must hold every image token (the
continuation then needs no pixels). Every pooling is computed over the
concatenation of the kept prefix states and the continuation states, i.e.
over the very tokens an unshared forward sees; the price is keeping the
prefix's per-layer states ([prefix groups, prefix, D] × (L+1)) until the
continuation has run.

The LM head runs on the last real token only when asked: for the first-token
record (top-k next tokens) and for the model's own yes/no answer to a caption
question (`probing.extraction.answers`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import torch

from probing.extraction.answers import YesNoTokens, answer_margins
from probing.extraction.capture import PooledLayerCapture
from probing.models.base import ModelAdapter, prompt_token_mask, token_composition


class PrefixSharingError(ValueError):
    """A model or batch that prefix sharing cannot serve."""


@dataclasses.dataclass
class ForwardResult:
    """Pooled features of one batch and, if asked, its next-token distribution."""

    pooled: dict[str, torch.Tensor]  # {pooling: [B, L+1, D] float32}
    tokens: int  # real tokens the decoder saw for these rows (unshared count)
    computed_tokens: int  # tokens actually run through the decoder
    topk_ids: torch.Tensor | None = None  # [B, k] long
    topk_probs: torch.Tensor | None = None  # [B, k] float32
    # [B, 3] long: image, template and prompt tokens per row (with prompt spans).
    token_counts: torch.Tensor | None = None
    # [B] float32: the model's yes-minus-no logit at the answer position
    # (probing.extraction.answers), for tasks that ask a yes/no question.
    answer_margins: torch.Tensor | None = None


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward argument that takes a KV cache: "cache" in transformers >= 5.2x, where
    "past_key_values" is deprecated (removal announced for 5.40), else "past_key_values"."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _output_cache(output: Any) -> Any:
    """The KV cache of a forward's output, under its new name or the old one."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def check_prefix_sharing_supported(adapter: ModelAdapter) -> None:
    """Raises unless the adapter's masks come straight from the processor.

    Prefix sharing splits `input_ids` and `attention_mask` by position, which
    is only meaningful when the processor already expanded image tokens. It
    is exact only if no prefix token attends to a later one; families where
    some do (PaliGemma's bidirectional prompt) say so in
    `ModelAdapter.prefix_sharing_unsupported`.
    """
    if adapter.prefix_sharing_unsupported:
        raise PrefixSharingError(
            f"config.extract.prefix_sharing=True is not supported for family "
            f"{adapter.family!r}: {adapter.prefix_sharing_unsupported}. "
            "Set config.extract.prefix_sharing=False."
        )
    if type(adapter).attention_mask is not ModelAdapter.attention_mask:
        raise PrefixSharingError(
            f"config.extract.prefix_sharing=True is not supported for family "
            f"{adapter.family!r}: its adapter rebuilds the attention mask (image tokens "
            "expanded inside forward). Set config.extract.prefix_sharing=False."
        )


def _sequence_keys(inputs: dict[str, torch.Tensor]) -> list[str]:
    """Keys of tensors aligned with input_ids position by position (mm_token_type_ids, ...)."""
    shape = inputs["input_ids"].shape
    return [
        key
        for key, value in inputs.items()
        if key != "attention_mask" and value.ndim == 2 and tuple(value.shape) == tuple(shape)
    ]


def _real_tokens(values: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    return [row[m.bool()] for row, m in zip(values, mask, strict=True)]


def _common_prefix_length(sequences: Sequence[torch.Tensor]) -> int:
    shortest = min(len(s) for s in sequences)
    first = sequences[0][:shortest]
    length = shortest
    for other in sequences[1:]:
        differs = (other[:shortest] != first).nonzero()
        if len(differs):
            length = min(length, int(differs[0]))
    return length


def _pad_stack(rows: Sequence[torch.Tensor], side: str, value: int = 0) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype, device=rows[0].device)
    for i, row in enumerate(rows):
        if side == "left":
            out[i, width - len(row) :] = row
        else:
            out[i, : len(row)] = row
    return out


def _is_mrope(model: torch.nn.Module) -> bool:
    """Qwen-VL style models keep the multimodal rope offset of the last prefill."""
    return hasattr(getattr(model, "model", None), "rope_deltas")


class PooledForward:
    """Runs processor batches through the hooked model and returns pooled features.

    Use as a context manager (it installs and removes the hooks).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        adapter: ModelAdapter,
        poolings: Sequence[str],
        with_image: bool,
        first_token_topk: int = 0,
        answer_tokens: YesNoTokens | None = None,
    ):
        self.model = model
        self.adapter = adapter
        self.poolings = tuple(poolings)
        self.with_image = with_image
        self.first_token_topk = int(first_token_topk)
        self.answer_tokens = answer_tokens
        # The first-token record and the model's answer need the final-normed
        # state of the last real token, which is the "last" pooling of the top layer.
        captured = self.poolings
        needs_head = self.first_token_topk > 0 or answer_tokens is not None
        if needs_head and "last" not in captured:
            captured = (*captured, "last")
        self.capture = PooledLayerCapture(
            adapter.decoder_layers(model), adapter.final_norm(model), captured
        )

    def __enter__(self) -> PooledForward:
        self.capture.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.capture.__exit__(*exc_info)

    # ------------------------------------------------------------------ plain
    def run(
        self, inputs: dict[str, torch.Tensor], prompt_spans: torch.Tensor | None = None
    ) -> ForwardResult:
        """One forward over `inputs` (processor output already on the model's device).

        `prompt_spans` ([B, 2], `ModelAdapter.prompt_spans`) locates each row's
        prompt text: needed by last_prompt pooling and the token counts.
        """
        attention_mask = self.adapter.attention_mask(inputs)
        image_mask = self.adapter.image_token_mask(inputs) if self.with_image else None
        prompt_mask = None
        if prompt_spans is not None:
            prompt_mask = prompt_token_mask(attention_mask, prompt_spans)
        self.capture.set_masks(attention_mask, image_mask, prompt_mask)
        with torch.inference_mode():
            # Only the last position's logits could ever be needed; the LM head
            # over every position is skipped (first tokens use the pooled state).
            self.model(**inputs, use_cache=False, logits_to_keep=1)
        tokens = int(attention_mask.sum())
        result = self._finish(self.capture.result(), tokens, tokens)
        return self._count(result, attention_mask, image_mask, prompt_spans)

    @staticmethod
    def _count(result: ForwardResult, attention_mask, image_mask, prompt_spans) -> ForwardResult:
        if prompt_spans is not None:
            result.token_counts = token_composition(attention_mask, image_mask, prompt_spans)
        return result

    # --------------------------------------------------------- prefix sharing
    def run_shared(
        self,
        inputs: dict[str, torch.Tensor],
        prefix_inputs: dict[str, torch.Tensor],
        prefix_groups: torch.Tensor,
        prompt_spans: torch.Tensor | None = None,
    ) -> ForwardResult:
        """Features of `inputs` with each prefix group's shared prefix run once.

        Args:
          inputs: processor output for every row (on the model's device).
          prefix_inputs: processor output for the first row of every prefix
            group, in prefix group order: its pixel tensors are the ones the
            prefix pass uses.
          prefix_groups: [B] long, the prefix group (image) of each row, 0..G-1.
          prompt_spans: as in `run`.
        """
        ids, mask = inputs["input_ids"], self.adapter.attention_mask(inputs)
        rows_ids = _real_tokens(ids, mask)
        num_prefix_groups = int(prefix_groups.max()) + 1
        members = [
            (prefix_groups == g).nonzero().flatten().tolist() for g in range(num_prefix_groups)
        ]
        image_id = self.adapter.image_token_id if self.with_image else None
        prefix_lengths = []
        for rows in members:
            sequences = [rows_ids[r] for r in rows]
            # Every continuation keeps at least its last token, the one whose
            # state "last" pooling and the first-token record read.
            length = min(_common_prefix_length(sequences), min(len(s) for s in sequences) - 1)
            if image_id is not None:
                for s in sequences:
                    positions = (s == image_id).nonzero()
                    if len(positions) and int(positions[-1]) >= length:
                        # Image tokens in the continuation: no sharing possible.
                        return self.run(inputs, prompt_spans)
            if length < 1:
                return self.run(inputs, prompt_spans)
            prefix_lengths.append(length)

        seq_keys = _sequence_keys(inputs)
        leaders = [rows[0] for rows in members]
        prefix = {}
        for key in seq_keys:
            real = _real_tokens(inputs[key], mask)
            prefix[key] = _pad_stack(
                [real[r][:n] for r, n in zip(leaders, prefix_lengths, strict=True)], "left"
            )
        prefix_mask = _pad_stack(
            [torch.ones(n, dtype=mask.dtype, device=mask.device) for n in prefix_lengths], "left"
        )
        # The prefix pass takes its pixels from prefix_inputs (one image per group).
        for key, value in prefix_inputs.items():
            if key not in seq_keys and key != "attention_mask":
                prefix[key] = value
        prefix["attention_mask"] = prefix_mask

        continuation = {}
        for key in seq_keys:
            real = _real_tokens(inputs[key], mask)
            continuation[key] = _pad_stack(
                [real[r][prefix_lengths[int(prefix_groups[r])] :] for r in range(len(real))],
                "right",
            )
        cont_mask = _pad_stack(
            [
                torch.ones(
                    len(rows_ids[r]) - prefix_lengths[int(prefix_groups[r])],
                    dtype=mask.dtype,
                    device=mask.device,
                )
                for r in range(len(rows_ids))
            ],
            "right",
        )
        full_mask = torch.cat([prefix_mask[prefix_groups], cont_mask], dim=1)
        full_ids = torch.cat([prefix["input_ids"][prefix_groups], continuation["input_ids"]], dim=1)
        image_mask = (
            self.adapter.image_token_mask({"input_ids": full_ids}) if self.with_image else None
        )
        cont_width = cont_mask.shape[1]

        with torch.inference_mode():
            self.capture.keep_prefix()
            out = self.model(**prefix, use_cache=True, logits_to_keep=1)
            cache = _output_cache(out)
            cache.reorder_cache(prefix_groups)
            extra: dict[str, Any] = {}
            if _is_mrope(self.model):
                # Multimodal rope counts real tokens only (left padding of the
                # prefix does not count): position = real index + the prefix group's
                # offset computed by the prefill.
                deltas = self.model.model.rope_deltas[prefix_groups].to(ids.device)
                real_prefix = torch.tensor(prefix_lengths, device=ids.device)[prefix_groups]
                steps = real_prefix[:, None] + torch.arange(cont_width, device=ids.device)
                extra["position_ids"] = (steps + deltas).unsqueeze(0).expand(3, -1, -1)
            self.capture.set_prefix(prefix_groups)
            prompt_mask = None
            if prompt_spans is not None:
                # Counted from the end of the real tokens, so the prefix's left
                # padding and the continuation's right padding do not matter.
                prompt_mask = prompt_token_mask(full_mask, prompt_spans)
            self.capture.set_masks(full_mask, image_mask, prompt_mask)
            self.model(
                **continuation,
                attention_mask=full_mask,
                **{_cache_argument(self.model): cache},
                use_cache=True,
                logits_to_keep=1,
                **extra,
            )
            pooled = self.capture.result()
            self.capture.clear_prefix()
        computed = sum(prefix_lengths) + int(cont_mask.sum())
        result = self._finish(pooled, int(mask.sum()), computed)
        unshared_images = self.adapter.image_token_mask(inputs) if self.with_image else None
        return self._count(result, mask, unshared_images, prompt_spans)

    # ------------------------------- the LM head: first tokens, the model's answer
    def _finish(self, pooled: dict[str, torch.Tensor], tokens: int, computed: int) -> ForwardResult:
        result = ForwardResult(
            pooled={name: pooled[name] for name in self.poolings},
            tokens=tokens,
            computed_tokens=computed,
        )
        if self.first_token_topk > 0 or self.answer_tokens is not None:
            logits = self.next_token_logits(pooled["last"][:, -1])
            if self.first_token_topk > 0:
                result.topk_ids, result.topk_probs = self._topk(logits)
            if self.answer_tokens is not None:
                result.answer_margins = answer_margins(logits, self.answer_tokens)
        return result

    def next_token_logits(self, final_states: torch.Tensor) -> torch.Tensor:
        """[B, V] float32 next-token logits from final-normed last-token states.

        The LM head runs on one position per row, the last real token, which
        is the right one under left and right padding alike (the model's own
        `logits_to_keep=1` logits are those of the last *position*, a padding
        token for right-padded rows).
        """
        head = self.model.get_output_embeddings()
        with torch.inference_mode():
            logits = head(final_states.to(head.weight.dtype)).to(torch.float32)
            softcap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
        return logits

    def next_token_topk(self, final_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k next-token ids and probabilities from final-normed last-token states."""
        return self._topk(self.next_token_logits(final_states))

    def _topk(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(logits, dim=-1)
        top = probs.topk(min(self.first_token_topk, probs.shape[-1]), dim=-1)
        return top.indices, top.values
