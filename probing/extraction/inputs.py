"""What a run's features are computed from, as digests, and why a resume was refused, in words.

The fingerprint of a run (`output.fingerprint`) holds these digests under
`inputs`: the task rows in order (image ids, prompts, labels, splits), the
image files' names and sizes, and the checkpoint (weights, config, processor
and tokenizer files, revision). A resume whose digests differ is refused by
`explain_mismatch`, which says what changed and what the two choices are.
"""

from __future__ import annotations

from typing import Any

from probing.store import digests, layout
from probing.store import workdir as store


def input_digests(table, checkpoint: dict[str, Any], model) -> dict:
    """The `inputs` part of the fingerprint of one run.

    `checkpoint` is `probing.store.digests.digest_checkpoint` of the model,
    taken before it was loaded.
    """
    arrays = {"labels": table.labels, "split": table.split, "group": table.group}
    if table.label_mask is not None:
        arrays["label_mask"] = table.label_mask
    checkpoint = dict(checkpoint)
    # For a hub id, transformers knows the commit it loaded from the cache.
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    if commit and "snapshot" not in checkpoint:
        checkpoint["snapshot"] = commit
    inputs: dict[str, Any] = {
        "task": digests.digest_rows(table.examples, arrays=arrays),
        "checkpoint": checkpoint,
    }
    if table.with_image:
        image_ids = {int(e["image_id"]) for e in table.examples}
        inputs["images"] = digests.digest_image_files(table.image_paths, image_ids)
    return inputs


def _phrase(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "inputs" and len(parts) > 1:
        if parts[1] == "task":
            return "the task rows"
        if parts[1] == "images":
            return "the image files (names or sizes)"
        if parts[1] == "checkpoint" and len(parts) > 2:
            if parts[2] == "weights":
                return "the model weights" + (
                    f" ({'.'.join(parts[3:-1])})" if len(parts) > 4 else ""
                )
            if parts[2] == "files":
                return f"checkpoint file {'.'.join(parts[3:])}"
            return f"the checkpoint {parts[2]}"
        return "the inputs (this workdir was written before input digests were recorded)"
    if parts[0] == "config":
        return f"config.{'.'.join(parts[1:])}"
    if parts[0] == "library_versions":
        return f"the version of {'.'.join(parts[1:])}"
    if parts[0] == "processor_settings_sha256":
        return "the image processor settings"
    return key


def explain_mismatch(wd: store.Workdir, differing: list[str], examples: list[dict]) -> str:
    """One line: what differs between the stored run and this one, and the two choices."""
    phrases: list[str] = []
    for key in differing:
        phrase = _phrase(key)
        if phrase not in phrases:
            phrases.append(phrase)
    if "the task rows" in phrases and wd.exists(layout.EXAMPLES_JSONL):
        where = digests.first_row_difference(wd.read_jsonl(layout.EXAMPLES_JSONL), examples)
        if where:
            phrases[phrases.index("the task rows")] = f"the task rows ({where})"
    shown = "; ".join(phrases[:8]) + (f"; and {len(phrases) - 8} more" if len(phrases) > 8 else "")
    return (
        f"workdir {wd.location} holds features of a different run, changed: {shown}. Use "
        "another --workdir, or pass --config.overwrite=True to replace its features "
        "(refused while it holds probes/, report/ or files extraction did not write)"
    )
