"""Forward hooks that pool every layer's hidden states while the model runs.

`output_hidden_states=True` keeps L+1 full [batch, tokens, hidden] tensors
alive until the forward ends; for Qwen2-VL-2B at COCO resolution that is
gigabytes per batch. Here each decoder layer's output is pooled inside its
hook, on the device, and only [batch, hidden] survives per layer and pooling.

Layer indexing follows transformers' `hidden_states` convention:
  0      the input of decoder layer 1 (embeddings, image features inserted),
  i      the output of decoder layer i,
  L      the output of the last layer after the model's final norm
         (transformers replaces hidden_states[-1] with last_hidden_state).

Prefix sharing (`probing.extraction.forward`) runs a shared prompt prefix once
and its continuations against the prefix's KV cache. For that the capture has
two more modes: `keep_prefix()` keeps the prefix pass's per-layer states
instead of pooling them, and `set_prefix(rows)` makes the next (continuation)
pass pool `[prefix states of the row's group, continuation states]`, so every
pooling sees exactly the tokens an unshared forward would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from probing.extraction.pooling import pool_states


def _first_tensor(value) -> torch.Tensor:
    """A decoder layer returns a tensor or a tuple whose first item is one."""
    return value[0] if isinstance(value, tuple | list) else value


class PooledLayerCapture:
    """Pools the hidden states of every layer of one forward pass.

    Usage:
      with PooledLayerCapture(layers, final_norm, poolings) as capture:
          capture.set_masks(attention_mask, image_mask)
          model(**batch)
      pooled = capture.result()   # {pooling: [B, L+1, D] float32}
    """

    def __init__(
        self,
        decoder_layers: Sequence[torch.nn.Module],
        final_norm: torch.nn.Module | None,
        poolings: Sequence[str],
    ):
        self.decoder_layers = list(decoder_layers)
        self.final_norm = final_norm
        self.poolings = tuple(poolings)
        self.num_layers = len(self.decoder_layers) + 1
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._attention_mask: torch.Tensor | None = None
        self._image_mask: torch.Tensor | None = None
        self._prompt_mask: torch.Tensor | None = None
        self._pooled: dict[str, list[torch.Tensor | None]] = {}
        # Prefix sharing: states of the prefix pass per layer ([G, P, D]) and,
        # for a continuation pass, the prefix group of each row ([B] long).
        self._keeping = False
        self._prefix_states: list[torch.Tensor | None] = []
        self._prefix_rows: torch.Tensor | None = None

    def __enter__(self) -> PooledLayerCapture:
        first = self.decoder_layers[0]
        self._handles.append(
            first.register_forward_pre_hook(self._embedding_hook, with_kwargs=True)
        )
        for index, layer in enumerate(self.decoder_layers, start=1):
            self._handles.append(layer.register_forward_hook(self._make_layer_hook(index)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def set_masks(
        self,
        attention_mask: torch.Tensor,
        image_mask: torch.Tensor | None,
        prompt_mask: torch.Tensor | None = None,
    ) -> None:
        """Masks for the next forward, aligned with the decoder's sequence.

        In a continuation pass (after `set_prefix`) the masks cover the prefix
        and the continuation, i.e. the sequence an unshared forward would see.
        """
        self._attention_mask = attention_mask
        self._image_mask = image_mask
        self._prompt_mask = prompt_mask
        self._pooled = {name: [None] * self.num_layers for name in self.poolings}

    def keep_prefix(self) -> None:
        """Makes the next forward keep its per-layer states (a shared prefix pass)."""
        self._keeping = True
        self._prefix_states = [None] * self.num_layers
        self._prefix_rows = None

    def set_prefix(self, rows: torch.Tensor) -> None:
        """Makes the next forward a continuation of prefix group `rows[b]` for row b."""
        if self._keeping or any(state is None for state in self._prefix_states):
            raise RuntimeError("set_prefix needs a finished keep_prefix() forward first")
        self._prefix_rows = rows

    def clear_prefix(self) -> None:
        """Frees the kept prefix states; the next forward is an ordinary one."""
        self._keeping = False
        self._prefix_states = []
        self._prefix_rows = None

    def _store(self, index: int, states: torch.Tensor) -> None:
        if self._keeping:
            self._prefix_states[index] = states
            if index == self.num_layers - 1:
                self._keeping = False
            return
        if self._prefix_rows is not None:
            prefix = self._prefix_states[index]
            states = torch.cat([prefix[self._prefix_rows].to(states.dtype), states], dim=1)
        if self._attention_mask is None:
            raise RuntimeError("PooledLayerCapture.set_masks must be called before the forward")
        if states.shape[:2] != self._attention_mask.shape:
            raise RuntimeError(
                f"layer {index}: hidden states have shape {tuple(states.shape[:2])} but the "
                f"attention mask {tuple(self._attention_mask.shape)}; the adapter's "
                "attention_mask() must describe the sequence the decoder sees"
            )
        pooled = pool_states(
            states, self._attention_mask, self._image_mask, self.poolings, self._prompt_mask
        )
        for name, value in pooled.items():
            self._pooled[name][index] = value

    def _embedding_hook(self, module, args, kwargs):
        states = args[0] if args else kwargs["hidden_states"]
        self._store(0, states)

    def _make_layer_hook(self, index: int):
        last = index == len(self.decoder_layers)

        def hook(module, args, output):
            states = _first_tensor(output)
            if last and self.final_norm is not None:
                # transformers reports the last hidden state after the final norm.
                states = self.final_norm(states)
            self._store(index, states)

        return hook

    def result(self) -> dict[str, torch.Tensor]:
        """{pooling: [B, L+1, D] float32} for the last forward."""
        out = {}
        for name, per_layer in self._pooled.items():
            missing = [i for i, value in enumerate(per_layer) if value is None]
            if missing:
                raise RuntimeError(f"layers {missing} were not reached in the forward pass")
            out[name] = torch.stack(per_layer, dim=1)  # type: ignore[arg-type]
        return out
