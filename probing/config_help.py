"""Every field of a config file with its current value and the comment that documents it.

  python -m probing.config_help --config=configs/qwen.py:category
  python -m probing.extract --config=configs/qwen.py --config.help     # the same
  python -m probing.train_all_layers --workdir=x --config.help         # the probe config

The comments are those written above each `config.<field> = ...` line (or at
its end) in the config file and in the probing modules that build its
sections (`default_data_config`, `extract_settings`, ...): they are read from
the sources with `tokenize` and `ast`, so they cannot drift from the code.
A field takes the comment of its definition (an assignment to a ConfigDict
created in the same function, where defaults are documented), else that of
an override (`config.data.coco_root = ...` in a config file).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import sys
import textwrap
import tokenize

from probing.config_files import flatten, load_config, resolve_config_path

_PACKAGE = "probing"


def _attribute_path(node: ast.expr) -> str | None:
    """`config.a.b` -> "a.b" (the variable's own name dropped); None for other targets."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or not parts:
        return None
    return ".".join(reversed(parts))


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _walk_scope(scope: ast.AST):
    """The nodes of one function (or module) body, not those of functions nested in it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            stack.extend(ast.iter_child_nodes(node))


def _defining(tree: ast.AST) -> set[int]:
    """ids of the assignments to a variable bound to a new `ConfigDict(...)` in the same
    function (or at module level): where fields are defined, not overridden."""
    out = set()
    for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))]:
        names = set()
        for node in _walk_scope(scope):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                func = node.value.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == "ConfigDict":
                    names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in _walk_scope(scope):
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(_root_name(t) in names for t in targets):
                    out.add(id(node))
    return out


def source_comments(source: str) -> dict[str, tuple[str, bool]]:
    """Field path (relative to the assigned variable) -> (its comment, is a definition).

    A block of comment lines documents the assignment right below it and the
    sibling fields assigned on the lines that follow without a comment of
    their own; an end-of-line comment documents its line. An assignment is a
    definition when its variable is a ConfigDict created in the same function
    (where defaults are documented), an override otherwise.
    """
    own_line: dict[int, str] = {}
    end_of_line: dict[int, str] = {}
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row = token.start[0]
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            (end_of_line if row in code_lines else own_line)[row] = text
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(row)
    comments: dict[str, tuple[str, bool]] = {}
    tree = ast.parse(source)
    defining = _defining(tree)
    assignments = [n for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.AnnAssign)]
    previous = None  # (end line, parent path, comment) of the last documented assignment
    for node in sorted(assignments, key=lambda n: n.lineno):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        paths = [p for p in map(_attribute_path, targets) if p]
        if not paths:
            continue
        block, row = [], node.lineno - 1
        while row in own_line:
            block.append(own_line[row])
            row -= 1
        text = " ".join(reversed(block))
        parent = paths[0].rpartition(".")[0]
        if not text and previous and previous[0] == node.lineno - 1 and previous[1] == parent:
            # A sibling right below a documented field shares its comment
            # ("# Batch size and device of ..." above two lines).
            text = previous[2]
        previous = (node.end_lineno, parent, text) if text else None
        if node.lineno in end_of_line:
            text = f"{text} {end_of_line[node.lineno]}".strip()
        definition = id(node) in defining
        for path in paths:
            if text and (path not in comments or (definition and not comments[path][1])):
                comments[path] = (text, definition)
    return comments


def _imported_files(source: str) -> list[str]:
    """Source files of the probing modules (and of the functions and classes) `source` imports."""
    files = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            pairs = [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            pairs = [(a.name, None) for a in node.names]
        else:
            continue
        for module_name, name in pairs:
            if module_name.split(".")[0] != _PACKAGE:
                continue
            try:
                module = importlib.import_module(module_name)
                target = getattr(module, name, module) if name else module
                if not inspect.ismodule(target) and not callable(target):
                    target = module
                files.append(inspect.getsourcefile(target))
            except (ImportError, TypeError):
                continue
    return [f for f in files if f]


def config_sources(path: str) -> list[str]:
    """The config file, then the probing modules it (transitively) imports that build configs."""
    order, seen, queue = [], set(), [path]
    while queue:
        file = queue.pop(0)
        if file in seen:
            continue
        seen.add(file)
        with open(file) as f:
            source = f.read()
        if file == path or "ConfigDict(" in source:
            order.append(file)
        queue.extend(_imported_files(source))
    return order


def field_comments(path: str) -> list[dict[str, tuple[str, bool]]]:
    """The comments of each source of the config file `path`, the file's own first."""
    out = []
    for file in config_sources(path):
        with open(file) as f:
            out.append(source_comments(f.read()))
    return out


def comment_for(field: str, comments: list[dict[str, tuple[str, bool]]]) -> str:
    """The comment of the field's definition (the longest matching suffix of its path), else
    of an override that has one."""
    parts = field.split(".")
    suffixes = [".".join(parts[start:]) for start in range(len(parts))]
    for want_definition in (True, False):
        for suffix in suffixes:
            for table in comments:
                text, definition = table.get(suffix, ("", False))
                if text and definition >= want_definition:
                    return text
    return ""


def describe(spec: str, width: int = 100) -> str:
    """Every field of the config `spec` (`path[:arg]`): `name = value` and its comment."""
    config = load_config(spec)
    comments = field_comments(resolve_config_path(spec.partition(":")[0]))
    blocks = [f"Fields of {spec} (override any with --config.<name>=<value>):"]
    for field, value in flatten(config).items():
        text = comment_for(field, comments) or "(undocumented)"
        body = textwrap.fill(text, width, initial_indent="    ", subsequent_indent="    ")
        blocks.append(f"{field} = {value!r}\n{body}")
    return "\n".join(blocks)


def main(argv: list[str]) -> int:
    specs = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if len(specs) != 1:
        print("usage: python -m probing.config_help --config=configs/<file>.py[:arg]")
        return 2
    try:
        print(describe(specs[0]))
    except (FileNotFoundError, AttributeError, ValueError) as error:
        print(f"probing.config_help: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
