"""Lettering for drawn images (the sandbox's previews): any prompt, legibly, with the fonts that ship in
the package (backends/fonts/, made by tools/subset_fonts.py; their licences lie beside them).

Each character is drawn with the first font that has it: DejaVu Sans (Latin, Greek, Cyrillic, symbols),
then Droid Sans Fallback (Chinese, Japanese, Korean). Characters neither has (emoji, scripts without a
font here) are drawn as one U+FFFD each, never as empty boxes; joiners, variation selectors and other
invisible characters are dropped. Lines wrap by measured width: at spaces, and between any two CJK
characters (which have no spaces), keeping closing punctuation off the start of a line.

Layout is Pillow's basic one (no shaping, no bidi), the same on every machine: right-to-left text is
drawn left to right, as replacement characters where no font covers it. Fonts are parsed once per
process; a FreeType face is opened once per thread and size (a face must not be used by two threads
at once).
"""

from __future__ import annotations

import functools
import struct
import threading
import unicodedata
from pathlib import Path

from PIL import ImageDraw, ImageFont

FONT_DIR = Path(__file__).with_name("fonts")
# In the order they are tried.
FONT_FILES = ("DejaVuSans-subset.ttf", "DroidSansFallback-subset.ttf")
REPLACEMENT = "\ufffd"
ELLIPSIS = "\u2026"

# No line starts with these (they close what came before) ...
_NO_BREAK_BEFORE = frozenset(",.;:!?)]}%\u2019\u201d\u2026\u00bb"
                             "\u3001\u3002\uff0c\uff0e\uff1a\uff1b\uff1f\uff01\uff09\uff3d\uff5d"
                             "\u300d\u300f\u3011\u3009\u300b\u3015\u3017\u3019\u301b\u30fc\u3005"
                             "\u3041\u3043\u3045\u3047\u3049\u3063\u3083\u3085\u3087"
                             "\u30a1\u30a3\u30a5\u30a7\u30a9\u30c3\u30e3\u30e5\u30e7")
# ... and no line ends with these (they open what follows).
_NO_BREAK_AFTER = frozenset("([{\u2018\u201c\u00ab\uff08\uff3b\uff5b\u300c\u300e\u3010\u3008\u300a\u3014\u3016"
                            "\u3018\u301a")


def cmap_codepoints(data: bytes) -> frozenset[int]:
    """The code points a TrueType/OpenType font maps to a real glyph (its Unicode cmap, format 4 or 12)."""
    num_tables = struct.unpack_from(">H", data, 4)[0]
    tables = {data[12 + 16 * i:16 + 16 * i]: struct.unpack_from(">II", data, 20 + 16 * i) for i in range(num_tables)}
    cmap = tables[b"cmap"][0]
    subtables: dict[tuple[int, int], int] = {}
    for i in range(struct.unpack_from(">H", data, cmap + 2)[0]):
        platform, encoding, offset = struct.unpack_from(">HHI", data, cmap + 4 + 8 * i)
        subtables[(platform, encoding)] = cmap + offset
    for key in ((3, 10), (0, 4), (0, 6)):  # full Unicode, format 12
        if key in subtables and struct.unpack_from(">H", data, subtables[key])[0] == 12:
            return _format_12(data, subtables[key])
    for key in ((3, 1), (0, 3), (0, 2), (0, 1), (0, 0)):  # the Basic Multilingual Plane, format 4
        if key in subtables and struct.unpack_from(">H", data, subtables[key])[0] == 4:
            return _format_4(data, subtables[key])
    raise ValueError("the font has no Unicode cmap of format 4 or 12")


def _format_12(data: bytes, at: int) -> frozenset[int]:
    groups = struct.unpack_from(">I", data, at + 12)[0]
    found: set[int] = set()
    for i in range(groups):
        start, end, glyph = struct.unpack_from(">III", data, at + 16 + 12 * i)
        found.update(range(start + (glyph == 0), end + 1))  # glyph 0 is .notdef, the missing glyph
    return frozenset(found)


def _format_4(data: bytes, at: int) -> frozenset[int]:
    segments = struct.unpack_from(">H", data, at + 6)[0] // 2
    ends = struct.unpack_from(f">{segments}H", data, at + 14)
    starts = struct.unpack_from(f">{segments}H", data, at + 16 + 2 * segments)
    deltas = struct.unpack_from(f">{segments}h", data, at + 16 + 4 * segments)
    range_offsets_at = at + 16 + 6 * segments
    found: set[int] = set()
    for i, (start, end, delta) in enumerate(zip(starts, ends, deltas, strict=True)):
        if start == 0xFFFF:
            continue
        range_offset = struct.unpack_from(">H", data, range_offsets_at + 2 * i)[0]
        for code in range(start, end + 1):
            if range_offset == 0:
                glyph = (code + delta) & 0xFFFF
            else:
                glyph = struct.unpack_from(">H", data, range_offsets_at + 2 * i + range_offset + 2 * (code - start))[0]
                glyph = (glyph + delta) & 0xFFFF if glyph else 0
            if glyph:
                found.add(code)
    return frozenset(found)


@functools.cache
def coverage() -> tuple[frozenset[int], ...]:
    """Per font (in FONT_FILES order), the code points it draws; read once per process."""
    return tuple(cmap_codepoints((FONT_DIR / name).read_bytes()) for name in FONT_FILES)


@functools.lru_cache(maxsize=8192)
def _font_of(char: str) -> int:
    """Index of the first font that has `char`; -1 for none."""
    code = ord(char)
    for index, codes in enumerate(coverage()):
        if code in codes:
            return index
    return -1


def _invisible(char: str) -> bool:
    """Characters that draw nothing by themselves: joiners, variation selectors, emoji modifiers and tags,
    other format characters, combining marks no font has, lone surrogates."""
    code = ord(char)
    return (0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF or 0x1F3FB <= code <= 0x1F3FF
            or unicodedata.category(char) in ("Mn", "Me", "Cs"))


def clean(text: str) -> str:
    """`text` as it will be drawn: whitespace made plain spaces and line breaks, control and invisible
    characters dropped, and each run of characters no font has (an emoji with its joiners and
    modifiers, a flag, a word in a script without a font here) replaced by a single U+FFFD."""
    out: list[str] = []
    for char in text.replace("\r\n", "\n"):
        if char in "\n\r\u2028\u2029":
            out.append("\n")
        elif char.isspace():
            out.append(" ")
        elif unicodedata.category(char) in ("Cc", "Cf"):  # controls, joiners, direction marks, soft hyphens
            continue
        elif _font_of(char) >= 0:
            out.append(char)
        elif _invisible(char):
            continue
        elif not out or out[-1] != REPLACEMENT:
            out.append(REPLACEMENT)
    return "".join(out)


class Lettering:
    """The fonts at one pixel size, with cached advance widths; use one per thread (see `lettering`)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fonts = [ImageFont.truetype(str(FONT_DIR / name), size, layout_engine=ImageFont.Layout.BASIC)
                      for name in FONT_FILES]
        # One baseline for every font of a line, below the tallest ascender.
        self.ascent = max(font.getmetrics()[0] for font in self.fonts)
        self._advances: dict[str, float] = {}

    def advance(self, char: str) -> float:
        width = self._advances.get(char)
        if width is None:
            index = _font_of(char)
            width = self.fonts[index].getlength(char) if index >= 0 else 0.0
            if index >= 0:
                self._advances[char] = width
        return width

    def width(self, text: str) -> float:
        """The drawn width of cleaned text (basic layout: advances add up, no kerning)."""
        return sum(self.advance(char) for char in text)

    def draw(self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
             fill: tuple[int, int, int]) -> None:
        """Draw one line of cleaned text with its top at xy, each run in the font that has it."""
        x, top = xy
        baseline = top + self.ascent
        for index, run in _runs(text):
            if index >= 0:
                draw.text((x, baseline), run, font=self.fonts[index], fill=fill, anchor="ls")
            x += self.width(run)

    def wrap(self, text: str, max_width: float, max_lines: int, *, more: bool = False) -> list[str]:
        """Cleaned text in lines of at most max_width pixels. When it takes more than max_lines, or `more`
        says the text was cut before it was passed, the last line ends in an ellipsis."""
        lines: list[str] = []
        for paragraph in text.split("\n"):
            lines.extend(self._wrap_paragraph(paragraph, max_width, max_lines + 1 - len(lines)))
            if len(lines) > max_lines:
                break
        if len(lines) <= max_lines and not more:
            return lines or [""]
        lines = lines[:max_lines] or [""]
        last = lines[-1].rstrip()
        room = max_width - self.advance(ELLIPSIS)
        while last and self.width(last) > room:
            last = last[:-1]
        return [*lines[:-1], last.rstrip() + ELLIPSIS]

    def _wrap_paragraph(self, paragraph: str, max_width: float, max_lines: int) -> list[str]:
        lines: list[str] = []
        line, line_width = "", 0.0
        for token in _tokens(paragraph):
            token_width = self.width(token)
            if line and line_width + token_width > max_width:
                lines.append(line.rstrip())
                if len(lines) >= max_lines:
                    return lines
                token = token.lstrip(" ")
                token_width = self.width(token)
                line, line_width = "", 0.0
            if line_width + token_width <= max_width:
                line, line_width = line + token, line_width + token_width
                continue
            for char in token:  # a word longer than a line: split it anywhere
                char_width = self.advance(char)
                if line and line_width + char_width > max_width:
                    lines.append(line)
                    if len(lines) >= max_lines:
                        return lines
                    line, line_width = "", 0.0
                line, line_width = line + char, line_width + char_width
        if line or not lines:
            lines.append(line.rstrip())
        return lines


def _wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F")


def _breakable(before: str, after: str) -> bool:
    """Whether a line may break between two characters."""
    if after in _NO_BREAK_BEFORE or before in _NO_BREAK_AFTER:
        return False
    if after == " ":
        return before != " "
    return before != " " and (_wide(after) or _wide(before))


def _tokens(paragraph: str) -> list[str]:
    """The unbreakable pieces of a paragraph: a word with the spaces before it, or one CJK character
    (with the punctuation that may not be parted from it)."""
    tokens: list[str] = []
    start = 0
    for index in range(1, len(paragraph)):
        if _breakable(paragraph[index - 1], paragraph[index]):
            tokens.append(paragraph[start:index])
            start = index
    if paragraph:
        tokens.append(paragraph[start:])
    return tokens


def _runs(text: str) -> list[tuple[int, str]]:
    """Consecutive characters drawn with the same font, as (font index, text); spaces are runs of their
    own (index -1: only advanced over), so no font is asked for a space it may lack."""
    runs: list[tuple[int, str]] = []
    for char in text:
        index = -1 if char == " " else _font_of(char)
        if runs and runs[-1][0] == index:
            runs[-1] = (index, runs[-1][1] + char)
        else:
            runs.append((index, char))
    return runs


_local = threading.local()


def lettering(size: int) -> Lettering:
    """This thread's Lettering at `size` (made on first use)."""
    cache: dict[int, Lettering] | None = getattr(_local, "letterings", None)
    if cache is None:
        cache = _local.letterings = {}
    found = cache.get(size)
    if found is None:
        found = cache[size] = Lettering(size)
    return found
