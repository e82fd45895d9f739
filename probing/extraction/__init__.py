"""Stage 1: run a frozen VLM and write pooled per-layer features to a workdir."""
