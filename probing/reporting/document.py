"""A tiny document model rendered to Markdown and to self-contained HTML.

The report is assembled once as a list of blocks (headings, paragraphs,
tables, figures, code) and written twice: report.md links the figure files
next to it; report.html embeds every figure as a base64 data URI and carries
its own stylesheet, so it reads in full when mailed or archived as one file;
its links to the PNG / SVG files and results.csv (relative) work where the
report folder travels with it.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
    text: str


@dataclasses.dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Figure:
    """A figure saved as `<stem>.png` and `<stem>.svg` in the figures folder."""

    png_path: str
    svg_path: str
    caption: str


@dataclasses.dataclass(frozen=True)
class Code:
    text: str


@dataclasses.dataclass(frozen=True)
class FileLink:
    """A paragraph `text` linking a file of the report folder (`path`, absolute)."""

    text: str
    path: str


Block = Heading | Paragraph | Table | Figure | Code | FileLink


def _padded(row: Sequence[str], width: int) -> list[str]:
    """A row with as many cells as the header: a short row (a baseline row without
    the last columns) would leave its HTML row ragged and shift Markdown cells."""
    return [*row, *([""] * (width - len(row)))]


def _markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block], base_dir: str) -> str:
    """Markdown text; figure links are relative to `base_dir` (report.md's folder)."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Table):
            lines = [
                "| " + " | ".join(_markdown_cell(c) for c in block.header) + " |",
                "|" + "|".join(" --- " for _ in block.header) + "|",
            ]
            lines += [
                "| " + " | ".join(_markdown_cell(c) for c in _padded(row, len(block.header))) + " |"
                for row in block.rows
            ]
            if block.note:
                lines += ["", f"*{block.note}*"]
            parts.append("\n".join(lines))
        elif isinstance(block, Figure):
            png = os.path.relpath(block.png_path, base_dir)
            svg = os.path.relpath(block.svg_path, base_dir)
            parts.append(f"![{block.caption}]({png})\n\n*{block.caption}* ([SVG]({svg}))")
        elif isinstance(block, Code):
            parts.append(f"```\n{block.text}\n```")
        elif isinstance(block, FileLink):
            parts.append(
                f"{block.text} [{os.path.basename(block.path)}]"
                f"({os.path.relpath(block.path, base_dir)})"
            )
    return "\n\n".join(parts) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 80em; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
p, pre, figcaption { max-width: 55em; }  /* text lines stay readable; tables get the width */
.table { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left;
         vertical-align: top; }
@media print { .table { overflow: visible; } figure { break-inside: avoid; } }
th { background: #f0f0f0; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; }
figcaption, .note { font-size: 0.9em; color: #444; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
"""


# Figures are saved at 300 dpi (figures/style.py). On the page each is shown at its
# print size times PAGE_SCALE CSS pixels per inch, so a column-width figure is half
# as wide as a page-width one and every figure's text has the same size (a plain
# max-width: 100% blew column-width figures up to the page width).
FIGURE_DPI = 300
PAGE_SCALE_PX_PER_IN = 130


def _data_uri(path: str) -> tuple[str, int | None]:
    """The PNG as a data URI, and its width in pixels (None if the header is not a PNG's)."""
    with open(path, "rb") as f:
        data = f.read()
    width = int.from_bytes(data[16:20], "big") if data[12:16] == b"IHDR" else None
    encoded = base64.b64encode(data).decode("ascii")
    return f"data:image/png;base64,{encoded}", width


def to_html(blocks: Sequence[Block], title: str, base_dir: str | None = None) -> str:
    """One self-contained HTML page: figures embedded, so it reads alone. With
    `base_dir` (report.html's folder) it also links each figure's PNG and SVG and
    every FileLink relative to it, for when the folder travels with the page."""
    body = []

    def link(path: str, text: str) -> str:
        if base_dir is None:
            return html.escape(text)
        href = html.escape(os.path.relpath(path, base_dir).replace(os.sep, "/"))
        return f'<a href="{href}">{html.escape(text)}</a>'

    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            body.append(f"<h{level}>{html.escape(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in block.header)
            rows = "".join(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(c))}</td>" for c in _padded(row, len(block.header))
                )
                + "</tr>"
                for row in block.rows
            )
            body.append(
                f'<div class="table"><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{rows}</tbody></table></div>"
            )
            if block.note:
                body.append(f'<p class="note">{html.escape(block.note)}</p>')
        elif isinstance(block, Figure):
            caption = html.escape(block.caption)
            uri, pixels = _data_uri(block.png_path)
            size = f' width="{round(pixels / FIGURE_DPI * PAGE_SCALE_PX_PER_IN)}"' if pixels else ""
            body.append(
                f'<figure><img src="{uri}"{size} alt="{caption}">'
                f"<figcaption>{caption}"
                + (
                    f" ({link(block.png_path, 'PNG')}, {link(block.svg_path, 'SVG')})"
                    if base_dir is not None
                    else ""
                )
                + "</figcaption></figure>"
            )
        elif isinstance(block, Code):
            body.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, FileLink):
            name = os.path.basename(block.path)
            body.append(f"<p>{html.escape(block.text)} {link(block.path, name)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
