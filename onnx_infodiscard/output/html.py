"""The pieces of the self-contained HTML pages: one stylesheet, escaped cells, tables, images as data URIs.

Pages embed everything (no scripts, links or fetched resources), so a report folder can be mailed
or archived as it is.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Iterable, Sequence

from .encode import fmt

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: Menlo, Consolas, monospace; font-size: 0.9em; word-break: break-all; }
.bad { color: #b00; font-weight: bold; } .ok { color: #070; }
.alert { border: 2px solid #b00; background: #fff0f0; color: #b00; padding: 0.6em 1em; margin: 1em 0; }
tr.unconverged td { background: #fff0f0; color: #b00; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.muted { color: #666; font-size: 0.9em; }
"""


def escape(text: str, quote: bool = True) -> str:
    """User text (paths, layer names, notes) as HTML text, never as markup (quotes escaped too)."""
    return html.escape(text, quote=quote)


def cell(value) -> str:
    """A value as escaped HTML text: strings as they are, anything else through `encode.fmt`."""
    return html.escape(value if isinstance(value, str) else fmt(value))


def head(title: str) -> list[str]:
    """The opening of a page: doctype, charset, viewport, title and the stylesheet."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
    ]


def table(
    header: Sequence[str],
    rows: Sequence[Sequence],
    numeric: Iterable[int] = frozenset(),
    row_class: Callable[[int], str] | None = None,
) -> str:
    """A table of escaped cells; `numeric` columns right-aligned, `row_class(k)` a CSS class per row."""
    numeric = set(numeric)
    out = ["<table><thead><tr>", *[f"<th>{html.escape(h)}</th>" for h in header], "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        css = row_class(k) if row_class else ""
        out.append(f'<tr class="{css}">' if css else "<tr>")
        for j, value in enumerate(row):
            out.append(f'<td class="num">{cell(value)}</td>' if j in numeric else f"<td>{cell(value)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def kv(pairs: Iterable[tuple[str, object]]) -> str:
    """A two-column table of names and values."""
    return (
        "<table><tbody>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{cell(v)}</td></tr>" for k, v in pairs)
        + "</tbody></table>"
    )


def png_uri(png: bytes) -> str:
    """A PNG as a data URI, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
