"""probing: layerwise linear probing of frozen vision-language models.

Stage 1 (`probing.extract`, PyTorch) writes pooled per-layer features of a
frozen VLM to a workdir; stage 2 (`probing.train_all_layers`, JAX) trains
linear probes for every layer and seed at once; `probing.report` draws the
figures. WORKSPACE.md documents the workdir that connects them.
"""

__version__ = "0.1.0"
