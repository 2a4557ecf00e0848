"""The report's self-contained index.html: sortable tables, the settings stated once, plots inlined."""
from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.results.leaderboards import (
    mark_column, numeric_column, target_column,
)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem auto;max-width:1400px;padding:0 1rem;color:#222}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd} h3{font-size:1rem;margin:1.2rem 0 .3rem}
.wide{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.8rem;margin:.3rem 0 .8rem}
th,td{border:1px solid #ddd;padding:.25rem .4rem;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none;font-weight:600;text-align:center;vertical-align:bottom;
   white-space:normal;line-height:1.2} th:hover{background:#e6e6e6}
th.group{cursor:default;background:#e9edf5} td.mark{text-align:center}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums} td.txt{text-align:left;max-width:20rem} td.method{min-width:10rem}
td.note{white-space:normal;max-width:8rem;color:#8a4b00;text-align:right}
tr:nth-child(even){background:#fafafa}
dl.fixed{display:grid;grid-template-columns:max-content auto;gap:.15rem 1rem;font-size:.85rem;margin:.4rem 0 .6rem;
   padding:.5rem .8rem;background:#f6f7fa;border-left:3px solid #4c72b0;max-width:78rem}
dl.fixed dt{font-weight:600;color:#444} dl.fixed dd{margin:0} p.fixed-title{font-size:.85rem;margin:.6rem 0 0;color:#555}
table.kv th{text-align:left;cursor:default;white-space:nowrap} table.kv td{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0} .meta{font-size:.85rem;color:#555;max-width:78rem}
code{background:#f3f3f3;padding:0 .2rem}
"""

_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th[data-col]').forEach(function(th){
    var col = parseInt(th.dataset.col, 10);
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
      var key = function(r){ var t = r.cells[col].innerText.replace(/[±×%★,]/g,' ').trim().split(' ')[0];
                             var n = parseFloat(t); return isNaN(n) ? r.cells[col].innerText : n; };
      rows.sort(function(a,b){ var x = key(a), y = key(b);
        if (typeof x === typeof y) return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        return (typeof x === 'number' ? -1 : 1); });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def _breakable(text: str) -> str:
    """Escaped text that may wrap after the separators of a method pipeline or a dataset's options."""
    out = html.escape(text)
    for sep in ("&gt;", ","):
        out = out.replace(sep, sep + "<wbr>")
    return out


def _fixed_html(fixed: Mapping[str, Any]) -> str:
    if not fixed:
        return ""
    items = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{_breakable(str(v))}</dd>" for k, v in fixed.items())
    return f'<p class="fixed-title">The same for every row of the table below:</p><dl class="fixed">{items}</dl>'


def _head_html(columns: list[Any]) -> str:
    """The header: a hardware target's columns (``cpu ms``, ``cpu speed-up`` ...) under one cell naming the
    target, the others spanning both header rows. Each column's own cell carries ``data-col`` (sorting)."""
    split = [target_column(c) for c in columns]
    if not any(split):
        return "<tr>" + "".join(f"<th data-col={i}>{_breakable(str(c))}</th>" for i, c in enumerate(columns)) + "</tr>"
    top, bottom, i = [], [], 0
    while i < len(columns):
        if split[i] is None:
            top.append(f"<th rowspan=2 data-col={i}>{_breakable(str(columns[i]))}</th>")
            i += 1
            continue
        j = i
        while j < len(columns) and split[j] is not None and split[j][0] == split[i][0]:
            bottom.append(f"<th data-col={j}>{html.escape(split[j][1])}</th>")
            j += 1
        top.append(f'<th colspan={j - i} class="group">{html.escape(split[i][0])}</th>')
        i = j
    return f"<tr>{''.join(top)}</tr><tr>{''.join(bottom)}</tr>"


def _table_html(frame: pd.DataFrame) -> str:
    """A sortable table, numbers right-aligned, preceded by ``frame.attrs["fixed"]`` (the settings shared by
    every row) as a list."""
    kinds = ["mark" if mark_column(frame, c) else "num" if numeric_column(frame, c) else
             "txt method" if str(c) in ("method", "A", "B") else "txt" for c in frame.columns]

    def cell(v: Any, kind: str) -> str:
        text = str(v)
        if kind == "num" and text[:1].isalpha():  # a note where a number would be ("unreliable (CV 7%)")
            return f'<td class="note">{html.escape(text)}</td>'
        return f'<td class="{kind}">{_breakable(text) if kind.startswith("txt") else html.escape(text)}</td>'

    body = "".join("<tr>" + "".join(cell(v, k) for v, k in zip(row, kinds)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return (_fixed_html(frame.attrs.get("fixed", {})) + f'<div class="wide"><table class="sortable"><thead>'
            f"{_head_html(list(frame.columns))}</thead><tbody>{body}</tbody></table></div>")


def html_page(title: str, tables: list[tuple[str, pd.DataFrame]], images: list[tuple[str, Path]],
              intro: str = "", provenance: Mapping[str, str] | None = None) -> str:
    """A self-contained page: inline CSS and JS, images as data URIs, no network; each table is preceded by
    the settings its rows share (``frame.attrs["fixed"]``, see :func:`~kdbench.results.leaderboards.display_frame`)."""
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append(f'<p class="meta">{html.escape(intro)}</p>')
    for heading, frame in tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>{_table_html(frame)}")
    for caption, path in images:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>")
    if provenance:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in provenance.items())
        parts.append(f"<h2>Provenance</h2><table class='kv'>{rows}</table>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "".join(parts)


# --------------------------------------------------------------------------- provenance
