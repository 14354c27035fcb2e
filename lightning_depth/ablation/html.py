"""An ablation's comparison as one self-contained HTML page, for clusters without W&B: the table with both
intervals, the notes under it (per-example analysis, seeds advice, several comparisons) and every plot embedded as
a data URI. One file to copy and open in any browser; it loads nothing from anywhere."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from lightning_depth.ablation.paired import Analysis
from lightning_depth.ablation.render import paired_notes, preamble, table_cells
from lightning_depth.ablation.report import Report
from lightning_depth.atomic import write_atomic

PAGE = "comparison.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
p.meta { color: #555; margin: 0.2rem 0; }
figure { display: inline-block; margin: 0.5rem; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def render_html(report: Report, analysis: Analysis, images: list[Path]) -> str:
    """The page as a string."""
    title, *meta = preamble(report)
    headers, rows = table_cells(report, analysis)
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
           f"<h1>{html.escape(title)}</h1>"]
    out += [f'<p class="meta">{html.escape(line)}</p>' for line in meta]
    out.append('<table id="comparison">')
    out.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead>")
    out.append("<tbody>")
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    out.append("</tbody></table>")
    out += _notes(paired_notes(report, analysis))
    for path in images:
        data = base64.b64encode(path.read_bytes()).decode()
        out.append(f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{html.escape(path.name)}</figcaption></figure>")
    return "\n".join(out + ["</body>", "</html>", ""])


def _notes(lines: list[str]) -> list[str]:
    """Lines starting with "- " become list items, the others paragraphs; an empty line ends a list."""
    out, in_list = [], False
    for line in lines + [""]:
        item = line.startswith("- ")
        if in_list and not item:
            out.append("</ul>")
            in_list = False
        if item and not in_list:
            out.append("<ul>")
            in_list = True
        if item:
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    return out


def write_html(report: Report, analysis: Analysis, images: list[Path],
               path: str | os.PathLike | None = None) -> Path:
    """Write the page (default: ``comparison.html`` in the ablation directory) atomically; returns its path."""
    return write_atomic(Path(path) if path is not None else report.ablation.path / PAGE,
                        render_html(report, analysis, [p for p in images if p.is_file()]))
