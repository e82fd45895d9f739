"""Finding and loading `get_config(arg)` config files the way `--config=path[:arg]` does.

The absl entry points read config files through ml_collections'
`config_flags`; `probing.demo` and the tests load the same files with
`load_config` so that every path exercises the same files. A path like
`configs/probe.py` is looked up in the working directory, then in the
repository, then in the installed package (`pip install .` ships configs/ as
probing.configs), so the same spelling works from anywhere.
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections
from ml_collections.config_flags import config_flags, tuple_parser

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/ in a source checkout (also under `pip install -e .`).
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")
# configs/ as installed by `pip install .` (setup.py maps it to probing.configs).
PACKAGED_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def resolve_config_path(path: str) -> str:
    """The config file `path` names: relative to cwd, the repository or the package."""
    candidates = [path, os.path.join(REPO_ROOT, path)]
    if not os.path.isabs(path) and os.path.normpath(path).split(os.sep)[0] == "configs":
        candidates.append(os.path.join(PACKAGED_CONFIG_DIR, os.path.relpath(path, "configs")))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"config file {path} does not exist (looked in the working directory, {REPO_ROOT} "
        f"and {PACKAGED_CONFIG_DIR})"
    )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`spec` is `path/to/config.py` or `path/to/config.py:arg` (see resolve_config_path)."""
    path, _, arg = spec.partition(":")
    try:
        path = resolve_config_path(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (from {spec!r})") from None
    module_spec = importlib.util.spec_from_file_location("probing_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path} has no get_config(arg=None) function")
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return config


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
    """Dotted field path -> value of every leaf field, in the config's order."""
    out: dict[str, object] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def compact(config: ml_collections.ConfigDict, width: int = 100) -> str:
    """The config in a few lines: `section: field=value ...` per top-level section.

    What an entry point logs at start (the full config is in the workdir's
    config.json); lines wrap at `width` characters.
    """
    sections: dict[str, list[str]] = {}
    for path, value in flatten(config).items():
        section, _, rest = path.partition(".")
        name = rest or section
        sections.setdefault(section if rest else "", []).append(f"{name}={value!r}")
    lines = []
    for section, items in sections.items():
        line = f"  {section}:" if section else " "
        for item in items:
            if len(line) + 1 + len(item) > width and not line.rstrip().endswith(":"):
                lines.append(line)
                line = "    "
            line += " " + item
        lines.append(line)
    return "\n".join(lines)


class CommaTupleParser(tuple_parser.TupleParser):
    """Tuple fields from the command line: `--config.poolings=mean,max` as ("mean", "max").

    ml_collections' own parser reads only Python literals ("('mean', 'max')");
    a bare comma-separated list is what researchers type. Literals still work,
    and each item that is a Python literal (1e-3, True) is read as one.
    """

    def parse(self, argument):
        if isinstance(argument, list):  # a flag given several times: one item each
            return tuple(item for a in argument for item in self.parse(a))
        if isinstance(argument, str) and "," in argument:
            try:
                value = ast.literal_eval(argument)
            except (ValueError, SyntaxError):
                return tuple(
                    _literal_or_text(item.strip()) for item in argument.split(",") if item.strip()
                )
            return (
                value
                if isinstance(value, tuple)
                else tuple(value)
                if isinstance(value, list)
                else (value,)
            )
        return super().parse(argument)


def _literal_or_text(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def accept_comma_lists() -> None:
    """Makes every tuple config field accept `a,b,c` on the command line (before flags parse)."""
    config_flags.register_flag_parser_for_type(tuple, CommaTupleParser())
