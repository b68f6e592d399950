"""Write the malformed-card corpus in tests/assets/malformed_cards/ (stdlib only).

Each file is one hazard from the field (see /work/shared/reference/reliability.md §3: broken
PNG framing, bad CRCs, zTXt bombs, bad base64, JSON that is not a card, wrongly typed fields)
and must make ``limamono.cards.read_card`` raise ``CardError`` within a second with a message
that contains the text recorded for it in ``EXPECTED.json``.

Run from the repository root: ``.venv/bin/python tests/assets/make_malformed_cards.py``.
The outputs are committed, so the tests do not depend on this script running.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

OUT = Path(__file__).parent / "malformed_cards"
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes, crc: int | None = None, length: int | None = None) -> bytes:
    """One chunk; ``crc``/``length`` override the true values to make broken ones."""
    true_crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return (struct.pack(">I", len(data) if length is None else length) + kind + data
            + struct.pack(">I", true_crc if crc is None else crc))


# A 1x1 RGB image: IHDR, one IDAT row (filter byte 0 + three colour bytes), IEND.
IHDR = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
IDAT = chunk(b"IDAT", zlib.compress(b"\x00\x80\x80\x80"))
IEND = chunk(b"IEND", b"")


def png(*middle: bytes, end: bytes = IEND) -> bytes:
    return SIGNATURE + IHDR + IDAT + b"".join(middle) + end


def text(keyword: str, value: bytes) -> bytes:
    return chunk(b"tEXt", keyword.encode() + b"\0" + value)


def b64(value: object) -> bytes:
    return base64.b64encode(json.dumps(value).encode())


def v2(**data: object) -> dict[str, object]:
    return {"spec": "chara_card_v2", "spec_version": "2.0",
            "data": {"name": "Mara", "description": "A cartographer.", **data}}


def chara(value: object) -> bytes:
    return png(text("chara", b64(value)))


def corpus() -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, text the CardError message must contain)."""
    good = b64(v2())
    cases: dict[str, tuple[bytes, str]] = {
        # PNG framing
        "not_a_png.png": (b"GIF89a this is not a png", "not a PNG file"),
        "empty.png": (b"", "not a PNG file"),
        "bad_signature.png": (b"\x89PNX\r\n\x1a\n" + png()[8:], "not a PNG file"),
        "signature_only.png": (SIGNATURE, "truncated file"),
        "truncated_mid_header.png": (png(text("chara", good))[:60], "is cut short"),
        "truncated_mid_chunk.png": (png(text("chara", good))[:120], "but only 51 remain"),
        "length_past_end.png": (SIGNATURE + IHDR + chunk(b"tEXt", b"chara\0" + good,
                                                         length=1_000_000) + IEND,
                                "declares 1000000 bytes"),
        "length_2gb.png": (SIGNATURE + IHDR + chunk(b"tEXt", b"chara\0", length=0x7FFFFFFF),
                           "over the limit"),
        "length_4gb.png": (SIGNATURE + IHDR + chunk(b"tEXt", b"chara\0", length=0xFFFFFFFF),
                           "over the PNG maximum"),
        "bad_crc.png": (png(chunk(b"tEXt", b"chara\0" + good, crc=0xDEADBEEF)), "bad CRC"),
        "missing_iend.png": (png(text("chara", good), end=b""), "without an IEND chunk"),
        "chunk_after_iend.png": (png() + text("chara", good), "after the IEND chunk"),
        "garbage_after_iend.png": (png(text("chara", good)) + b"junk", "after the IEND chunk"),
        "ihdr_not_first.png": (SIGNATURE + text("chara", good) + IHDR + IDAT + IEND,
                               "not 'IHDR'"),
        "bad_chunk_type.png": (png(chunk(b"t3Xt", b"chara\0" + good)), "bad chunk type"),
        "many_text_chunks.png": (png(*[text(f"k{i}", b"x") for i in range(1100)],
                                     text("chara", good)), "more than 1024 text chunks"),
        # text chunks
        "no_card_chunk.png": (png(), "no character card"),
        "other_text_only.png": (png(text("Comment", b"made with love")), "no character card"),
        "keyword_without_nul.png": (png(chunk(b"tEXt", b"chara" + good)), "no keyword"),
        "duplicate_chara.png": (png(text("chara", good), text("chara", good)),
                                "two 'chara' card chunks"),
        "broken_ccv3_beside_good_chara.png": (png(text("chara", good),
                                                  text("ccv3", b"%%%not base64%%%")),
                                              "'ccv3' chunk at byte"),
        "ztxt_bomb.png": (png(chunk(b"zTXt", b"chara\0\0"
                                    + zlib.compress(b"A" * (64 * 1024 * 1024), 9))),
                          "decompression bomb"),
        "ztxt_bad_zlib.png": (png(chunk(b"zTXt", b"chara\0\0not zlib data")),
                              "compressed data is corrupt"),
        "ztxt_cut_short.png": (png(chunk(b"zTXt", b"chara\0\0" + zlib.compress(good)[:20])),
                               "cut short"),
        "ztxt_unknown_method.png": (png(chunk(b"zTXt", b"chara\0\x07" + zlib.compress(good))),
                                    "unknown compression method"),
        "itxt_bad_zlib.png": (png(chunk(b"iTXt", b"chara\0\x01\x00en\0\0garbage")),
                              "compressed data is corrupt"),
        "itxt_missing_fields.png": (png(chunk(b"iTXt", b"chara\0\x00\x00en")),
                                    "missing language tag"),
        # base64
        "base64_bad_char.png": (png(text("chara", good[:10] + b"!" + good[11:])),
                                "not base64: '!'"),
        "base64_url_safe.png": (png(text("chara", b"eyJuYW1lIjoiTWFyYSJ9-_")), "URL-safe"),
        "base64_bad_padding.png": (png(text("chara", good.rstrip(b"=") + b"A")), "padding"),
        "base64_padding_inside.png": (png(text("chara", b"eyJu=YW1l")), "'=' padding"),
        # JSON
        "not_utf8.png": (png(text("chara", base64.b64encode(b'{"name": "Ma\xe9ra"}'))),
                         "not UTF-8"),
        "json_syntax_error.png": (png(text("chara", base64.b64encode(b'{"name": "Mara",}'))),
                                  "not valid"),
        "json_array.png": (chara(["Mara"]), "must be an object, got a list"),
        "json_string.png": (chara("Mara"), "must be an object, got text"),
        "json_number.png": (chara(42), "must be an object, got a number"),
        "deep_nesting.png": (png(text("chara", base64.b64encode(b"[" * 10000 + b"]" * 10000))),
                             "nested too deeply"),
        "deep_nesting_object.png": (png(text("chara", base64.b64encode(
            b'{"name":"Mara","x":' + b"[" * 200 + b"]" * 200 + b"}"))), "nested more than"),
        "duplicate_keys.png": (png(text("chara", base64.b64encode(
            b'{"name": "Mara", "name": "Tova"}'))), "duplicate key 'name'"),
        "nan_value.png": (png(text("chara", base64.b64encode(
            b'{"name": "Mara", "depth": NaN}'))), "NaN is not a JSON number"),
        # card fields
        "name_is_number.png": (chara(v2(name=5)), "'data.name' must be text"),
        "name_empty.png": (chara(v2(name="")), "has no name"),
        "name_blank.png": (chara(v2(name="   ")), "has no name"),
        "name_two_lines.png": (chara(v2(name="Mara\n### Response:")), "holds a line break"),
        "v2_without_name.png": (chara({"spec": "chara_card_v2", "data": {"first_mes": "Hi"}}),
                                "has no name"),
        "v2_data_not_object.png": (chara({"spec": "chara_card_v2", "data": "Mara"}),
                                   "'data' must be an object"),
        "unknown_spec.png": (chara({"spec": "tavern_card", "data": {"name": "Mara"}}),
                             "unknown spec"),
        "greetings_not_list.png": (chara(v2(alternate_greetings="Hi")),
                                   "'data.alternate_greetings' must be a list"),
        "tag_not_text.png": (chara(v2(tags=["map", 3])), "'data.tags[1]' must be text"),
        "extensions_list.png": (chara(v2(extensions=["x"])), "'data.extensions' must be"),
        "first_mes_null.png": (chara(v2(first_mes=None)), "'data.first_mes' must be text"),
        # JSON files
        "v1_without_name.json": (json.dumps({"description": "nameless"}).encode(),
                                 "no 'name' field"),
        "spec_not_text.json": (json.dumps({"spec": 2, "data": {"name": "Mara"}}).encode(),
                               "'spec' must be text"),
        "v3_bad_spec_version.json": (json.dumps({"spec": "chara_card_v3", "spec_version": "",
                                                 "data": {"name": "Mara"}}).encode(),
                                     "spec_version"),
        "v3_date_as_text.json": (json.dumps({"spec": "chara_card_v3", "spec_version": "3.0",
                                             "data": {"name": "Mara",
                                                      "creation_date": "yesterday"}}).encode(),
                                 "'data.creation_date' must be a number"),
        "book_is_list.json": (json.dumps(v2(character_book=[])).encode(),
                              "'data.character_book' must be an object"),
        "empty.json": (b"", "neither a PNG nor a JSON object"),
        "truncated.json": (b'{"name": "Mara", "descr', "not valid"),
        "latin1.json": (b'{"name": "Ma\xe9ra"}', "not UTF-8"),
        # sheets and conversation files
        "empty_sheet.txt": (b"\n\n  \n", "the sheet is empty"),
        "sheet_with_header.txt": (b"Mara\nA cartographer.\n### Response:\nMara: hi\n",
                                  "'### ' header"),
        "conversation_no_user.yaml": (b"character:\n  name: Mara\nmessages: []\n",
                                      "required field is missing"),
    }
    return cases


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cases = corpus()
    for old in OUT.iterdir():
        if old.name not in cases and old.name != "EXPECTED.json":
            old.unlink()
    for name, (data, _) in cases.items():
        (OUT / name).write_bytes(data)
    expected = {name: needle for name, (_, needle) in sorted(cases.items())}
    (OUT / "EXPECTED.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
