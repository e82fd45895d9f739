"""Whether the Hugging Face hub may be reached: the offline switches, read at call time.

huggingface_hub reads HF_HUB_OFFLINE once, at import; a launch script or a
test that sets it later is seen only through the environment, so both are
consulted.
"""

from __future__ import annotations

import os

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE forbids downloads."""
    import huggingface_hub.constants

    values = (os.environ.get(n, "").lower() for n in OFFLINE_VARIABLES)
    return any(v in ("1", "true", "yes", "on") for v in values) or bool(
        huggingface_hub.constants.HF_HUB_OFFLINE
    )
