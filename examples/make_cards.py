"""Make the SillyTavern card PNGs of the bundled characters (run from the repository root).

    .venv/bin/python examples/make_cards.py

Each `examples/characters/<slug>.yaml` (sheet, default scenario, greeting) becomes
`examples/characters/<slug>.png`: a V2 + V3 card around a drawn portrait plate. The picture
is generated here with Pillow (a night-sky gradient, a moon, a horizon and the name), so
the cards carry no third-party artwork. Re-running gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from limamono import cards
from limamono.core import conversation as conv_mod

SIZE = (400, 600)


def palette(name: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two colours derived from the name, so each character has its own plate."""
    h = hashlib.sha256(name.encode()).digest()
    top = (h[0] // 4, h[1] // 4, 60 + h[2] // 3)
    bottom = (120 + h[3] // 3, 60 + h[4] // 3, 40 + h[5] // 4)
    return top, bottom


def portrait(name: str) -> bytes:
    """A deterministic drawn plate: gradient sky, moon, hills, and the name on a band."""
    top, bottom = palette(name)
    img = Image.new("RGB", SIZE)
    draw = ImageDraw.Draw(img)
    for y in range(SIZE[1]):
        t = y / (SIZE[1] - 1)
        draw.line([(0, y), (SIZE[0], y)],
                  fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    seed = hashlib.sha256(name.encode()).digest()
    moon_x = 80 + seed[6] % 240
    draw.ellipse([moon_x - 40, 70, moon_x + 40, 150], fill=(245, 236, 210))
    for i in range(40):  # stars
        x, y = seed[i % 32] * 7 % SIZE[0], (seed[(i * 5) % 32] * 3 + i * 11) % 260
        draw.point([(x, y), (x + 1, y)], fill=(255, 255, 230))
    hills = [(0, 430)] + [(x, 400 - (seed[(x // 40) % 32] % 70)) for x in range(0, 441, 40)]
    draw.polygon([*hills, (SIZE[0], SIZE[1]), (0, SIZE[1])], fill=(25, 30, 40))
    draw.rectangle([0, 500, SIZE[0], 560], fill=(15, 15, 20))
    font = ImageFont.load_default(size=28)
    width = draw.textlength(name, font=font)
    draw.text(((SIZE[0] - width) / 2, 512), name, fill=(240, 230, 200), font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main(folder: Path = Path("examples/characters")) -> int:
    for path in sorted(folder.glob("*.yaml")):
        conv = conv_mod.load_yaml(path)
        card = cards.conversation_to_card(conv, source=str(path))
        card.data["creator"] = "limamono examples"
        card.data["tags"] = ["limamono", "original", "sfw"]
        card.image = portrait(conv.character.name)
        out = path.with_suffix(".png")
        cards.write_card(card, out)
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
