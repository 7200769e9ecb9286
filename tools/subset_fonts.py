"""Make the two fonts the sandbox draws with (src/safelight/backends/fonts/) from their upstream files.

    pip install fonttools
    python -m tools.subset_fonts DejaVuSans.ttf DroidSansFallback.ttf

The inputs are DejaVu Sans 2.37 (Debian `fonts-dejavu-core`, /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf;
Bitstream Vera licence, DejaVu changes public domain) and Droid Sans Fallback from Android 6.0.1
(Debian `fonts-droid-fallback`, /usr/share/fonts-droid-fallback/truetype/DroidSansFallback.ttf, the file
WITH the 11,172 Hangul syllables; DroidSansFallbackFull.ttf lacks them; Apache-2.0).

The subsets keep the characters a prompt is likely to hold and nothing else, without hinting, vertical
metrics or kerning (the sandbox lays text out with Pillow's basic layout, which sums advances):

- DejaVu Sans: Latin (with Vietnamese), IPA, combining diacritics, Greek, Cyrillic, punctuation, currency,
  arrows, maths, box drawing, shapes, miscellaneous symbols and dingbats, and U+FFFD, which the sandbox
  draws for anything neither font has (emoji, scripts without a font here). About 280 KB.
- Droid Sans Fallback: CJK punctuation, kana, Bopomofo, Hangul jamo and syllables, CJK unified ideographs
  (U+4E00-9FFF; its Extension A has two glyphs), compatibility ideographs, full-width forms. About 3.3 MB,
  1.6 MB compressed in the wheel.

A developer tool, not part of the wheel; fontTools is not a dependency of Safelight.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "src" / "safelight" / "backends" / "fonts"

LATIN = [(0x20, 0x7E), (0xA0, 0x24F), (0x250, 0x2FF), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x52F),
         (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2070, 0x209F), (0x20A0, 0x20CF), (0x2100, 0x214F),
         (0x2150, 0x218F), (0x2190, 0x21FF), (0x2200, 0x22FF), (0x2300, 0x23FF), (0x2460, 0x24FF),
         (0x2500, 0x257F), (0x2580, 0x259F), (0x25A0, 0x25FF), (0x2600, 0x26FF), (0x2700, 0x27BF),
         (0xFB00, 0xFB06), (0xFFFD, 0xFFFD)]
CJK = [(0x1100, 0x11FF), (0x2E80, 0x2FDF), (0x3000, 0x303F), (0x3040, 0x30FF), (0x3100, 0x312F),
       (0x3130, 0x318F), (0x3190, 0x31FF), (0x3200, 0x33FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
       (0xAC00, 0xD7AF), (0xF900, 0xFAFF), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF)]


def subset(source: Path, target: Path, ranges: list[tuple[int, int]]) -> int:
    from fontTools import subset as fonttools_subset
    from fontTools.ttLib import TTFont

    font = TTFont(source)
    wanted = [code for code in font.getBestCmap() if any(low <= code <= high for low, high in ranges)]
    options = fonttools_subset.Options()
    options.hinting = False
    options.drop_tables += ["vhea", "vmtx", "kern", "FFTM", "DSIG"]
    options.name_IDs = ["*"]  # keep the copyright and licence records
    options.notdef_outline = True
    options.glyph_names = False
    subsetter = fonttools_subset.Subsetter(options)
    subsetter.populate(unicodes=wanted)
    subsetter.subset(font)
    font.save(target)
    return len(wanted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dejavu", type=Path, help="DejaVuSans.ttf")
    parser.add_argument("droid", type=Path, help="DroidSansFallback.ttf")
    args = parser.parse_args()
    for source, name, ranges in ((args.dejavu, "DejaVuSans-subset.ttf", LATIN),
                                 (args.droid, "DroidSansFallback-subset.ttf", CJK)):
        count = subset(source, TARGET / name, ranges)
        print(f"{TARGET / name}: {count} characters, {(TARGET / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
