"""The HTML toolkit every report page is built from: escaping and number formats, tables, links, figures,
sections and the page itself, and reading the JSON files a page shows."""

# A page has inline CSS and one small inline script (it counts images that failed to load), and it
# refers to its images by relative path, so the folder can be copied or served anywhere as it is.

from __future__ import annotations

import datetime
import html
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from peaufine.errors import RunDirError

REPORT_NAME = "report.html"


# ---------------------------------------------------------------------------------------------------
# Text and numbers.


class Html(str):
    """Markup that is already safe; every other value put on the page is escaped."""


class Num(str):
    """The text of a number (formatted already): a table right-aligns it."""


def escape(value: Any) -> Html:
    """The value as text safe on the page: escaped, unless it is `Html` already."""
    return value if isinstance(value, Html) else Html(html.escape(str(value)))


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt_number(value: Any) -> Num:
    """Integers exactly; floats to 4 significant digits (whole from 10,000 up); '–' when missing."""
    if value is None:
        return Num("–")
    if isinstance(value, bool):
        return Num("yes" if value else "no")
    if isinstance(value, int):
        return Num(f"{value:,}")
    if isinstance(value, float):
        if not math.isfinite(value):
            return Num(str(value))
        return Num(f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}")
    return Num(str(value))


def fmt_percent(value: Any) -> Num:
    if is_number(value) and math.isfinite(value):
        return Num(f"{value:.1%}")
    return fmt_number(value)


def fmt_seconds(value: Any) -> Num:
    if not is_number(value):
        return Num("–")
    if value < 100:
        return Num(f"{value:.1f} s")
    minutes, seconds = divmod(round(value), 60)
    if minutes < 60:
        return Num(f"{minutes} min {seconds:02d} s")
    return Num(f"{minutes // 60} h {minutes % 60:02d} min")


# Metric names whose values in [0, 1] are shown as percentages ("learning rate" is not one of them).
RATE_WORDS = (
    "accuracy",
    "exact_match",
    "exact match",
    "exact answer",
    "f1",
    "precision",
    "recall",
    "pass_rate",
    "pass rate",
    "fraction",
)


def fmt_metric(name: str, value: Any) -> Num:
    """A metric by its name: accuracy, exact match, F1 and fractions in [0, 1] as percentages, a
    relative change as a signed percentage."""
    if "relative" in name.lower() and is_number(value) and math.isfinite(value):
        return Num(f"{value * 100:+.1f}%")
    rate = any(word in name.lower() for word in RATE_WORDS)
    if rate and isinstance(value, float) and 0.0 <= value <= 1.0:
        return fmt_percent(value)
    return fmt_number(value)


def change(before: Any, after: Any, percent: bool = False) -> Num:
    """after - before, signed; in percentage points when the figures are fractions."""
    if not (is_number(before) and is_number(after)):
        return Num("–")
    delta = after - before
    if percent:
        return Num(f"{delta * 100:+.1f} pt")
    return Num(("+" if delta >= 0 else "") + fmt_number(delta))


def before_after(label: str, before: Any, after: Any, percent: bool = False) -> tuple[Any, ...]:
    """A table row: label, before, after, change."""
    shown = fmt_percent if percent else fmt_number
    return label, shown(before), shown(after), change(before, after, percent)


def both(first: Any, second: Any, separator: str = " / ") -> str:
    return f"{fmt_number(first)}{separator}{fmt_number(second)}"


# ---------------------------------------------------------------------------------------------------
# Markup: tables, figures, the page.


def _cell(value: Any, tag: str = "td") -> str:
    if isinstance(value, Html):
        return f"<{tag}>{value}</{tag}>"
    if isinstance(value, Num) or is_number(value) or value is None:
        return f'<{tag} class="num">{html.escape(fmt_number(value))}</{tag}>'
    return f"<{tag}>{html.escape(fmt_number(value) if isinstance(value, bool) else str(value))}</{tag}>"


def table(
    header: Sequence[str] | None,
    rows: Iterable[Sequence[Any]],
    caption: str | None = None,
    css: str = "",
) -> Html:
    """A table; cells are escaped unless `Html`, numbers formatted and right-aligned. Without a
    header the first column is a row header (a key / value table)."""
    parts = [f'<table class="{css or ("kv" if header is None else "grid")}">']
    if caption:
        parts.append(f"<caption>{escape(caption)}</caption>")
    if header:
        parts.append("<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead>")
    parts.append("<tbody>")
    for row in rows:
        first = _cell(escape(row[0]), "th") if header is None else _cell(row[0])
        parts.append("<tr>" + first + "".join(_cell(c) for c in row[1:]) + "</tr>")
    parts.append("</tbody></table>")
    return Html("".join(parts))


def samples_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Html:
    """Generated text side by side: wrapped, and a model's "18" stays text, left-aligned."""
    return table(header, ([_text(c) for c in row] for row in rows), css="samples")


def _text(value: Any) -> Any:
    return value if is_number(value) else str(value if value is not None else "–")


def href(target: Path, base: Path) -> str:
    """`target` as a URL relative to the folder `base`: never absolute, so the folder can move."""
    relative = os.path.relpath(Path(target).resolve(), Path(base).resolve())
    return "/".join(quote(part) for part in Path(relative).parts)


def link(target: Path, base: Path, text: str) -> Html:
    return Html(f'<a href="{html.escape(href(target, base))}">{escape(text)}</a>')


def figure(image: Path, base: Path, caption: str) -> Html:
    return Html(
        f'<figure><img src="{html.escape(href(image, base))}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def paragraph(text: str) -> Html:
    return Html(f"<p>{escape(text)}</p>")


def heading(text: str) -> Html:
    return Html(f"<h3>{escape(text)}</h3>")


def details(summary: str, body: str) -> Html:
    return Html(f"<details><summary>{escape(summary)}</summary>{body}</details>")


def preformatted(text: str) -> Html:
    return Html(f"<pre>{escape(text)}</pre>")


@dataclass
class Section:
    """One titled part of the page; a section with no parts is left out (its data does not exist)."""

    title: str
    parts: list[str] = field(default_factory=list)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
  padding: 1rem 1.5rem 4rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; margin-top: 2.2rem; }
h3 { margin: 1.4rem 0 .4rem; } .meta { color: #555; margin-top: 0; }
nav { background: #f5f5f7; padding: .5rem .8rem; border-radius: 6px; font-size: .9rem; }
nav a { margin-right: 1rem; white-space: nowrap; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #d6d6d6; padding: .25rem .55rem; text-align: left; vertical-align: top; }
thead th { background: #f0f0f3; } tbody tr:nth-child(even) { background: #fafafa; }
tbody th { background: #f7f7f9; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.kv td.num { text-align: left; }
table.samples td { max-width: 28rem; white-space: pre-wrap; word-break: break-word; }
caption { text-align: left; font-weight: 600; padding-bottom: .25rem; white-space: nowrap; }
figure { margin: .8rem 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .85rem; }
pre { background: #f5f5f7; padding: .6rem; overflow-x: auto; font-size: .8rem; }
details { margin: .6rem 0; } summary { cursor: pointer; color: #0a58ca; }
.status-ran { color: #146c2e; } .status-failed { color: #b3261e; font-weight: 600; }
.status-skipped { color: #777; }
.warning { background: #fff4e5; border: 1px solid #f0a500; padding: .6rem .8rem; border-radius: 6px; }
"""

# Counts the images that failed to load once the page has loaded: a warning for the reader, and the
# body's data-images-* attributes for a headless check (see report/browser.py).
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0, broken = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth === 0) { broken++; }
    else if (images[i].complete) { loaded++; }
  }
  document.body.setAttribute("data-images-loaded", String(loaded));
  document.body.setAttribute("data-images-broken", String(broken));
  if (broken > 0) {
    var warning = document.getElementById("broken-images");
    warning.textContent = broken + " of " + images.length +
      " images did not load: keep the PNG files where they are, next to report.html.";
    warning.hidden = false;
  }
});
"""


def render_page(title: str, meta: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole document: title, a line of facts, a table of contents, then the sections with parts."""
    shown = [s for s in sections if s.parts]
    anchors = [f"s{i}-" + re.sub(r"[^a-z0-9]+", "-", s.title.lower()).strip("-") for i, s in enumerate(shown)]
    nav = "".join(f'<a href="#{a}">{escape(s.title)}</a>' for a, s in zip(anchors, shown, strict=True))
    body = "".join(
        f'<section id="{a}"><h2>{escape(s.title)}</h2>{"".join(s.parts)}</section>\n'
        for a, s in zip(anchors, shown, strict=True)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        f'<body><h1>{escape(title)}</h1><p class="meta">{" · ".join(escape(m) for m in meta)}</p>'
        '<p id="broken-images" class="warning" hidden></p>'
        f"<nav>{nav}</nav>\n{body}<script>{_SCRIPT}</script></body></html>\n"
    )


# ---------------------------------------------------------------------------------------------------
# Files and times.


def now_stamp() -> str:
    """The time now, to the minute, as a page prints it."""
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def modified_stamp(path: Path) -> str:
    """When `path` was last written, to the minute."""
    return datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when there is no such file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(
            f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); the file is damaged or still being "
            "written"
        ) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; [] when there is none."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RunDirError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
    return rows


def run_folder(run: str | None, base: Path) -> Path | None:
    """A run's folder, as a page's file names it: relative to `base` unless absolute; None for no run."""
    if not run:
        return None
    return Path(run) if Path(run).is_absolute() else base / run


def run_cell(run: str | None, base: Path) -> Any:
    """A link to a run's report.html when it has one, else the run's name."""
    folder = run_folder(run, base)
    if folder is not None and (folder / REPORT_NAME).is_file():
        return link(folder / REPORT_NAME, base, run or REPORT_NAME)
    return f"{run} (no report)" if run else "–"
