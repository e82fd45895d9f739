"""Objects named by import path in a config: `"package.module:Name"`.

How a user plugs their own code into a run without forking: a model adapter
(`model.adapter`, probing.models.registry) or a task builder (`task.builder`,
probing.tasks.custom). The module must be importable (installed, or on
PYTHONPATH / the working directory).
"""

from __future__ import annotations

import importlib
from typing import Any


def load_object(spec: str, field: str) -> Any:
    """The object `spec` = "package.module:Name" names; `field` is the config field, for errors."""
    module_name, colon, name = str(spec).partition(":")
    if not colon or not module_name or not name:
        raise ValueError(
            f"{field}={spec!r} is not an import path; write 'package.module:Name' "
            "(e.g. 'my_models.adapters:MyAdapter')"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"{field}={spec!r}: cannot import module {module_name!r} ({error}); install it or "
            "put its folder on PYTHONPATH"
        ) from error
    target: Any = module
    for part in name.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{field}={spec!r}: module {module_name!r} has no {name!r}")
        target = getattr(target, part)
    return target
