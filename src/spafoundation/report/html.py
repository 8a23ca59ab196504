"""One self-contained HTML page: text, tables and figures (PNG embedded as data URIs, no external files)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spafoundation.utils.atomic import atomic_path

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
.note{color:#555;font-size:.9em}nav a{margin-right:1em}
"""


@dataclass
class Block:
    """A titled part of the report: paragraphs, tables (lists of row dicts) and figures (PNG paths + captions)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[list[dict]] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)


def _cell(v) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.3f}"
    return html.escape(str(v))


def table_html(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def write_report(path, title: str, blocks: Sequence[Block], subtitle: str = "") -> Path:
    """Write the page atomically; figures that are missing on disk are an error, not a broken image."""
    for b in blocks:
        for fig, _ in b.figures:
            if not Path(fig).is_file():
                raise FileNotFoundError(f"report figure missing: {fig}")
    nav = " ".join(f'<a href="#{_anchor(b.title)}">{html.escape(b.title)}</a>' for b in blocks)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
             f'<p class="note">{html.escape(subtitle)}</p><nav>{nav}</nav>']
    for b in blocks:
        parts.append(f'<h2 id="{_anchor(b.title)}">{html.escape(b.title)}</h2>')
        parts += [f"<p>{html.escape(p)}</p>" for p in b.paragraphs]
        parts += [table_html(t) for t in b.tables]
        parts += [figure_html(f, c) for f, c in b.figures]
    parts.append("</body></html>")
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")
    return path
