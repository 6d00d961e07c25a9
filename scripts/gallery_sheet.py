"""Writes docs/gallery.png: a picture of a batch's gallery.html drawn from the page itself (no browser needed).

The page is parsed as a browser would read it; each row becomes a card like the page's: the first frame of its
embedded thumbnail (twice its size), id, status, prompt, seed and timings, or the reason a failed row has no clip.
Run from the repository root after a batch (`make render`, or `wan-dist batch output=...`):

    python scripts/gallery_sheet.py [outputs/batch/gallery.html] [docs/gallery.png] [columns]
"""

from __future__ import annotations

import base64
import io
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CARD_W, CARD_H, PAD, THUMB = 470, 188, 14, 128
COLOURS = {"completed": (52, 199, 89), "failed": (255, 59, 48), "skipped": (10, 132, 255)}


class _Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.header: list[str] = []
        self.rows: list[dict] = []
        self._field: str | None = None
        self._in_header = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        cls = (attrs.get("class") or "").split()
        if tag == "header":
            self._in_header = True
        elif tag == "article":
            self.rows.append({"id": attrs["data-id"], "status": attrs["data-status"], "facts": {}})
        elif tag == "img" and "thumb" in cls:
            self.rows[-1]["thumb"] = attrs["src"]
        elif tag == "p" and self._in_header:
            self.header.append("")
            self._field = "header"
        elif tag in ("p", "div") and cls and cls[0] in ("prompt", "error", "no-clip"):
            self._field = cls[0]
        elif tag in ("dt", "dd"):
            self._field = tag

    def handle_endtag(self, tag):
        if tag == "header":
            self._in_header = False
        if tag in ("p", "div", "dd"):
            self._field = None

    def handle_data(self, data):
        if self._field == "header":
            self.header[-1] += data
        elif self._field == "dt":
            self._key = data
        elif self._field == "dd":
            self.rows[-1]["facts"][self._key] = data
        elif self._field:
            self.rows[-1][self._field] = self.rows[-1].get(self._field, "") + data


def _font(size: int, bold: bool = False):
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    path = Path("/usr/share/fonts/truetype/dejavu") / name
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default(size=size)


def _card(row: dict) -> Image.Image:
    card = Image.new("RGB", (CARD_W, CARD_H), "white")
    draw = ImageDraw.Draw(card)
    colour = COLOURS.get(row["status"], (128, 128, 128))
    draw.rectangle([0, 0, 5, CARD_H], fill=colour)
    draw.rectangle([0, 0, CARD_W - 1, CARD_H - 1], outline=(217, 217, 222))
    if row.get("thumb"):
        frame = Image.open(io.BytesIO(base64.b64decode(row["thumb"].split(",", 1)[1])))
        frame.seek(getattr(frame, "n_frames", 1) // 2)  # the middle of the clip
        frame = frame.convert("RGB")
        scale = THUMB / max(frame.size)
        frame = frame.resize((round(frame.width * scale), round(frame.height * scale)), Image.NEAREST)
        card.paste(frame, (PAD + 4, PAD))
    else:
        box = [PAD + 4, PAD, PAD + 4 + THUMB, PAD + THUMB]
        hatch = Image.new("RGB", (THUMB, THUMB), (255, 235, 234))
        for offset in range(-THUMB, THUMB, 14):
            ImageDraw.Draw(hatch).line([offset, THUMB, offset + THUMB, 0], fill=(255, 205, 202), width=4)
        card.paste(hatch, tuple(box[:2]))
        draw.rectangle(box, outline=colour)
        lines = textwrap.wrap(row.get("no-clip", "no clip"), 19)[:6]
        draw.multiline_text((box[0] + 6, box[1] + 6), "\n".join(lines), fill=(120, 20, 15), font=_font(11))
    x = PAD + 4 + THUMB + PAD
    draw.text((x, PAD - 2), row["id"], fill=(29, 29, 31), font=_font(15, bold=True))
    badge_x = x + draw.textlength(row["id"], font=_font(15, bold=True)) + 8
    width = draw.textlength(row["status"], font=_font(11)) + 12
    draw.rounded_rectangle([badge_x, PAD, badge_x + width, PAD + 16], radius=8, fill=colour)
    draw.text((badge_x + 6, PAD + 1), row["status"], fill="white", font=_font(11))
    y = PAD + 24
    for line in textwrap.wrap(row.get("prompt", ""), 46)[:3]:
        draw.text((x, y), line, fill=(29, 29, 31), font=_font(12))
        y += 16
    facts = row["facts"]
    for key in ("model", "seed", "size", "timings"):
        if key in facts:
            draw.text((x, y + 2), f"{key}", fill=(110, 110, 115), font=_font(11))
            draw.text((x + 58, y + 2), textwrap.shorten(facts[key], 44), fill=(29, 29, 31), font=_font(11))
            y += 15
    if row.get("error"):
        for line in textwrap.wrap(row["error"], 50)[:2]:
            draw.text((x, y + 4), line, fill=colour, font=_font(11))
            y += 14
    if row.get("thumb"):
        draw.text((x, y + 6), "clip   sidecar", fill=(10, 100, 220), font=_font(12))
    return card


def main(page: str = "outputs/batch/gallery.html", out: str = "docs/gallery.png", columns: str = "3") -> None:
    parsed = _Page(Path(page).read_text(encoding="utf-8"))
    if not parsed.rows:
        raise SystemExit(f"{page}: no rows")
    columns = int(columns)
    rows = -(-len(parsed.rows) // columns)
    head_h = 118
    sheet = Image.new("RGB", (PAD + columns * (CARD_W + PAD), head_h + rows * (CARD_H + PAD) + PAD), (242, 242, 245))
    draw = ImageDraw.Draw(sheet)
    draw.rectangle([0, 0, sheet.width, head_h - PAD], fill="white")
    draw.text((20, 12), "wan-dist batch gallery", fill=(29, 29, 31), font=_font(18, bold=True))
    for index, line in enumerate(parsed.header[:2]):
        draw.text((20, 40 + 18 * index), line.replace("\u00b7", "|"), fill=(110, 110, 115), font=_font(12))
    x = 20
    for label in ("Status  all  \u25be", "Model  all  \u25be", "Search  prompt or id"):
        width = draw.textlength(label, font=_font(12)) + 16
        draw.rounded_rectangle([x, 80, x + width, 98], radius=4, outline=(160, 160, 165))
        draw.text((x + 8, 82), label, fill=(29, 29, 31), font=_font(12))
        x += width + 12
    draw.text((x, 82), f"{len(parsed.rows)} of {len(parsed.rows)} rows shown", fill=(110, 110, 115), font=_font(12))
    for index, row in enumerate(parsed.rows):
        column, line = index % columns, index // columns
        sheet.paste(_card(row), (PAD + column * (CARD_W + PAD), head_h + line * (CARD_H + PAD)))
    sheet.save(out, optimize=True)
    print(f"{out}: {len(parsed.rows)} rows")


if __name__ == "__main__":
    main(*sys.argv[1:])
