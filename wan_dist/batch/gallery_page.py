"""The HTML of a batch gallery (wan_dist.batch.gallery): one page, its style and script inline, nothing fetched.

Each row is an ``<article class="row">`` with ``data-status``, ``data-model`` and ``data-id``; its thumbnail is an
``<img class="thumb">`` (a ``data:`` URI), a failed row shows its reason in the thumbnail's place; the links are
``a.clip-link``, ``a.sidecar-link`` and, for each platform rendition, ``a.rendition-link`` (and ``a.guides-link``
for its guides copy) with ``data-profile``. The filters are ``select#filter-status``, ``select#filter-model`` and a
text box ``input#filter-text`` (prompt or id); ``#status=failed&model=toy`` in the page's URL presets them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from html import escape

__all__ = ["Entry", "render_page"]


@dataclass(frozen=True, kw_only=True)
class Entry:
    """What the page shows of one row (None: unknown or not applicable)."""

    id: str
    index: int | None
    model: str
    status: str  # completed | failed | skipped
    run_id: str | None
    attempts: int | None
    finished_at: float | None
    prompt: str | None
    seed: int | None
    error: str | None
    error_column: str | None
    render_s: float | None
    publish_s: float | None
    wall_s: float | None
    size: str | None  # "64x64, 17 frames at 16 fps, 20 steps"
    clip_href: str | None
    sidecar_href: str | None
    thumbnail: str | None  # a data: URI
    thumbnail_size: tuple[int, int] | None
    note: str | None  # why something is missing (an unreadable sidecar, a clip that does not decode)
    renditions: tuple[tuple[str, str, str | None], ...] = ()  # (profile, href, href of its guides copy or None)


_STYLE = """
:root { color-scheme: light dark; --fg: #1d1d1f; --muted: #6e6e73; --card: #fff; --bg: #f2f2f5; --line: #d9d9de; }
@media (prefers-color-scheme: dark) { :root { --fg: #f2f2f5; --muted: #a1a1a6; --card: #1c1c1e; --bg: #000;
  --line: #38383a; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { position: sticky; top: 0; z-index: 1; padding: 12px 20px; background: var(--card);
  border-bottom: 1px solid var(--line); }
h1 { margin: 0 0 4px; font-size: 18px; }
header p { margin: 2px 0; color: var(--muted); word-break: break-all; }
.filters { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin-top: 8px; }
.filters select, .filters input { font: inherit; padding: 3px 6px; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 14px; padding: 16px 20px; }
.row { display: flex; gap: 12px; padding: 10px; background: var(--card); border: 1px solid var(--line);
  border-radius: 8px; border-left: 5px solid #34c759; }
.row[hidden] { display: none; }
.row.status-failed { border-left-color: #ff3b30; }
.row.status-skipped { border-left-color: #0a84ff; }
.thumb { flex: none; width: 128px; height: auto; align-self: flex-start; border-radius: 4px; background: #000; }
.no-clip { flex: none; width: 128px; min-height: 96px; padding: 8px; border-radius: 4px; font-size: 12px;
  background: repeating-linear-gradient(45deg, #ff3b3022, #ff3b3022 8px, transparent 8px, transparent 16px);
  overflow-wrap: anywhere; }
.meta { min-width: 0; flex: 1; }
.meta h2 { margin: 0; font-size: 14px; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 11px; color: #fff;
  background: #34c759; }
.status-failed .badge { background: #ff3b30; }
.status-skipped .badge { background: #0a84ff; }
.prompt { margin: 4px 0; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 0 8px; margin: 4px 0; font-size: 12px; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
.error { margin: 4px 0; color: #ff3b30; overflow-wrap: anywhere; }
.note { margin: 4px 0; color: var(--muted); font-size: 12px; }
.links a { margin-right: 10px; }
"""

_SCRIPT = """
(function () {
  var rows = Array.prototype.slice.call(document.querySelectorAll("#rows .row"));
  var status = document.getElementById("filter-status"), model = document.getElementById("filter-model");
  var text = document.getElementById("filter-text"), shown = document.getElementById("shown");
  var preset = new URLSearchParams(location.hash.slice(1));
  if (preset.get("status")) status.value = preset.get("status");
  if (preset.get("model")) model.value = preset.get("model");
  function apply() {
    var query = text.value.trim().toLowerCase(), count = 0;
    rows.forEach(function (row) {
      var keep = (!status.value || row.dataset.status === status.value) &&
                 (!model.value || row.dataset.model === model.value) &&
                 (!query || row.dataset.search.indexOf(query) >= 0);
      row.hidden = !keep;
      if (keep) count += 1;
    });
    shown.textContent = count + " of " + rows.length + " rows shown";
  }
  status.addEventListener("change", apply);
  model.addEventListener("change", apply);
  text.addEventListener("input", apply);
  apply();
})();
"""


def render_page(entries: list[Entry], *, output_uri: str, run_id: str | None, links_note: str,
                generated_at: float) -> str:
    """The whole page as text (UTF-8 when written)."""
    statuses = Counter(entry.status for entry in entries)
    models = Counter(entry.model for entry in entries)
    runs = sorted({entry.run_id for entry in entries if entry.run_id})
    scope = f"run {run_id}" if run_id else f"latest result of every row over {len(runs)} run(s)"
    counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(generated_at))
    head = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>wan-dist gallery: {escape(output_uri)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n")
    header = (f"<header>\n<h1>wan-dist batch gallery</h1>\n<p>{escape(output_uri)} &middot; {escape(scope)}</p>\n"
              f"<p>{len(entries)} rows: {escape(counts)} &middot; written {when}</p>\n"
              f"<p>{escape(links_note)}</p>\n<div class=\"filters\">\n"
              f"{_select('status', 'Status', statuses)}\n{_select('model', 'Model', models)}\n"
              '<label>Search <input id="filter-text" type="search" placeholder="prompt or id"></label>\n'
              '<span id="shown"></span>\n</div>\n</header>\n')
    rows = "\n".join(_row(entry) for entry in entries)
    return f'{head}{header}<main id="rows">\n{rows}\n</main>\n<script>{_SCRIPT}</script>\n</body>\n</html>\n'


def _select(name: str, label: str, counts: Counter) -> str:
    options = [f'<option value="">all ({sum(counts.values())})</option>']
    options += [f'<option value="{escape(value)}">{escape(value)} ({count})</option>'
                for value, count in sorted(counts.items())]
    return f'<label>{label} <select id="filter-{name}" name="{name}">{"".join(options)}</select></label>'


def _row(entry: Entry) -> str:
    search = " ".join(filter(None, (entry.id, entry.prompt, entry.error))).lower()
    status = escape(entry.status)
    parts = [f'<article class="row status-{status}" data-status="{status}" data-model="{escape(entry.model)}" '
             f'data-id="{escape(entry.id)}" data-search="{escape(search)}">']
    if entry.thumbnail:
        width, height = entry.thumbnail_size
        parts.append(f'<img class="thumb" src="{entry.thumbnail}" width="{width}" height="{height}" '
                     f'alt="frames of {escape(entry.id)}" loading="lazy">')
    else:
        reason = entry.error or entry.note or "no clip"
        parts.append(f'<div class="no-clip">no clip: {escape(reason)}</div>')
    parts.append(f'<div class="meta">\n<h2>{escape(entry.id)} <span class="badge">{status}</span></h2>')
    if entry.prompt:
        parts.append(f'<p class="prompt">{escape(entry.prompt)}</p>')
    parts.append(f"<dl>{_facts(entry)}</dl>")
    if entry.error:
        column = f" [{escape(entry.error_column)}]" if entry.error_column else ""
        parts.append(f'<p class="error">failed{column}: {escape(entry.error)}</p>')
    if entry.note:
        parts.append(f'<p class="note">{escape(entry.note)}</p>')
    links = []
    if entry.clip_href:
        links.append(f'<a class="clip-link" href="{escape(entry.clip_href)}">clip</a>')
    if entry.sidecar_href:
        links.append(f'<a class="sidecar-link" href="{escape(entry.sidecar_href)}">sidecar</a>')
    for profile, href, guides_href in entry.renditions:
        links.append(f'<a class="rendition-link" data-profile="{escape(profile)}" href="{escape(href)}">'
                     f'{escape(profile)}</a>')
        if guides_href:
            links.append(f'<a class="guides-link" data-profile="{escape(profile)}" href="{escape(guides_href)}">'
                         f'{escape(profile)} guides</a>')
    if links:
        parts.append(f'<p class="links">{" ".join(links)}</p>')
    parts.append("</div>\n</article>")
    return "\n".join(parts)


def _facts(entry: Entry) -> str:
    timings = ", ".join(f"{name} {value:.1f} s" for name, value in
                        (("render", entry.render_s), ("publish", entry.publish_s), ("wall", entry.wall_s))
                        if value is not None)
    facts = [("model", entry.model), ("seed", entry.seed), ("size", entry.size), ("timings", timings or None),
             ("attempts", entry.attempts), ("row", entry.index), ("run", entry.run_id)]
    return "".join(f"<dt>{name}</dt><dd>{escape(str(value))}</dd>" for name, value in facts if value not in (None, ""))
