"""The sandbox draws every prompt legibly: Chinese (two of kie's four seed examples are Chinese),
Japanese, Korean, Latin with accents, Greek, Cyrillic; emoji and scripts without a font here as one
replacement character, never as empty boxes; wrapping by measured width, CJK included.

"Drawn" is checked by pixels: every distinct character gives its own glyph bitmap, where Pillow's
default font gives one identical box for all of them (shown below, so the check can tell them apart).
"""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFont

from safelight.backends import Job
from safelight.backends.sandbox import draw_preview, render_preview
from safelight.backends.text import ELLIPSIS, REPLACEMENT, clean, coverage, lettering
from safelight.catalog import GenerationParams

# The Chinese prompts of kie's seed examples (shared/spec/seeds/000 and 001), verbatim.
SEED_000 = (
    "创作一幅具有电影质感的写实风格中景镜头,呈现 90 年代末独立电影的怀旧温情氛围。画面主角"
    "是一位染着亮粉色头发(略带褪色痕迹)、满脸雀斑的年轻女孩,她直视镜头,眼神专注,笑容中带着"
    "期许又略带一丝忐忑。她身着一件宽松的复古乐队T恤(略有磨损,胸前印有裂纹斑驳的白色文字“K"
    "IE AI”),内搭条纹长袖上衣,佩戴简约的银色耳钉。光线为柔和的黄金时刻阳光,透过蒙着薄"
    "尘的窗户洒入,形成镜头光晕,照亮空气中漂浮的尘埃。背景是一间模糊的凌乱卧室,墙上贴满海报,"
    "挂着串灯,采用浅景深效果呈现。画面带有自然的胶片颗粒感,色调温暖柔和且略微低饱和,女孩富有"
    "情绪的双眼清晰对焦,营造出亲密而真实的质感。"
)
SEED_001 = (
    "将上传肖像中的这位女性(身着休闲白衬衫)置于宁静的花园场景中。画面需呈现生机盎然的绿植与缤"
    "纷花卉,柔和的阳光透过枝叶洒落。她坐在木质长椅上,手持书本,浅笑嫣然。背景被葱郁的绿植填满"
    ",营造出静谧祥和的氛围。午后的金色光线勾勒出她的脸庞,在地面投下柔和的阴影,为整个画面增添"
    "悠然、沉思的意境。"
)
SIZE = 32


def glyph(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, char: str) -> bytes:
    image = Image.new("L", (SIZE * 2, SIZE * 2))
    ImageDraw.Draw(image).text((4, 4), char, font=font, fill=255)
    return image.tobytes()


def han(text: str) -> list[str]:
    return sorted({char for char in text if 0x4E00 <= ord(char) <= 0x9FFF})


def job(prompt: str, width: int = 1024, height: int = 1024, output_format: str = "png") -> Job:
    return Job(task_id="t", params=GenerationParams(model="z-image", prompt=prompt, width=width, height=height,
                                                    output_format=output_format), seeds=[1])


def test_pillows_default_font_draws_the_seed_prompts_as_identical_boxes():
    # What the sandbox drew before: every Chinese character the same "tofu" box.
    default = ImageFont.load_default(size=SIZE)
    assert len({glyph(default, char) for char in han(SEED_000 + SEED_001)}) == 1


def test_every_chinese_character_of_the_seed_prompts_gets_its_own_glyph():
    characters = han(SEED_000 + SEED_001)
    assert len(characters) > 150
    bitmaps = {}
    for char in characters:
        line = lettering(SIZE)
        image = Image.new("RGB", (SIZE * 2, SIZE * 2))
        line.draw(ImageDraw.Draw(image), (4, 4), char, fill=(255, 255, 255))
        bitmaps[char] = image.tobytes()
        assert image.getbbox() is not None, f"{char} drew nothing"
    assert len(set(bitmaps.values())) == len(characters)


@pytest.mark.parametrize("prompt", [SEED_000, SEED_001])
def test_the_preview_of_a_chinese_prompt_shows_its_characters(prompt):
    # Swap each Chinese character for another: drawn glyphs change the picture, tofu boxes would not.
    characters = han(prompt)
    swapped = prompt.translate({ord(a): b for a, b in zip(characters, characters[1:] + characters[:1], strict=True)})
    drawn, other = render_preview(job(prompt), 1024, 1024, 5), render_preview(job(swapped), 1024, 1024, 5)
    difference = ImageChops.difference(drawn, other).convert("L").point(lambda v: 255 if v > 40 else 0)
    box = difference.getbbox()
    assert box is not None and box[1] > 330  # only the prompt differs, below the label
    assert difference.histogram()[255] > 20_000  # glyph strokes, not a pixel here and there
    assert render_preview(job(prompt), 1024, 1024, 5).tobytes() == drawn.tobytes()  # deterministic


def test_chinese_wraps_by_width_without_spaces_and_keeps_punctuation_off_line_starts():
    line = lettering(24)
    lines = line.wrap(clean(SEED_000), 600, 100)
    assert len(lines) > 8
    assert all(line.width(text) <= 600 for text in lines)
    assert all(line.width(text) > 520 for text in lines[:-1])  # filled, not broken at the rare spaces only
    assert not [text for text in lines if text[0] in "，。、,.)）”"]
    assert "".join(lines).replace(" ", "") == clean(SEED_000).replace(" ", "")  # nothing lost


def test_latin_wraps_at_spaces_and_a_word_longer_than_a_line_is_split():
    line = lettering(20)
    lines = line.wrap("the quick brown fox jumps over the lazy dog " * 4 + "8" * 120, 300, 100)
    assert all(line.width(text) <= 300 for text in lines)
    assert all(text.split(" ")[0] in ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog")
               for text in lines[:5])
    assert "".join(lines).endswith("8" * 5) and sum(text.count("8") for text in lines) == 120
    assert len([text for text in lines if "8" in text]) >= 3


def test_text_past_the_last_line_ends_in_an_ellipsis():
    line = lettering(20)
    lines = line.wrap(clean(SEED_000), 300, 3)
    assert len(lines) == 3 and lines[-1].endswith(ELLIPSIS) and line.width(lines[-1]) <= 300
    assert line.wrap("short", 300, 3) == ["short"]
    assert line.wrap("short", 300, 3, more=True) == ["short" + ELLIPSIS]


def test_the_fonts_cover_the_scripts_a_prompt_is_likely_in():
    latin, cjk = coverage()
    for char in "Aé ñßŁ Ωж€→★" + REPLACEMENT:
        assert ord(char) in latin, char
    for char in "中國日本語のカタカナ한국어。，":
        assert ord(char) in cjk, char
    for char in "🐱م":
        assert ord(char) not in latin and ord(char) not in cjk


def test_emoji_and_uncovered_scripts_become_one_replacement_character_each():
    assert clean("a 🐱 cat") == f"a {REPLACEMENT} cat"
    assert clean("family 👨\u200d👩\u200d👧 👍🏽 🇫🇷!") == f"family {REPLACEMENT} {REPLACEMENT} {REPLACEMENT}!"
    assert clean("مرحبا بالعالم") == f"{REPLACEMENT} {REPLACEMENT}"
    assert clean("1\ufe0f\u20e3 cafe\u0301\u200b") == "1 cafe\u0301"  # keycap parts dropped, the accent kept
    assert clean("a\tb\r\nc\x00d\ud83de") == "a b\ncde"  # controls and a lone surrogate dropped


@pytest.mark.parametrize("prompt", [
    "a cat 🐱 on a 🛹, 👨‍👩‍👧‍👦 watching 🇯🇵🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "שלום עולם, ‏مرحبا بالعالم‎ — a right-to-left prompt",
    "日本語のプロンプト、한국어 프롬프트, Ελληνικά, русский, Tiếng Việt",
    "\ud800 \U0010ffff \x00\x1b[31m" + "\u0301" * 200,
    "",
    "x" * 5000,
])
@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_any_prompt_draws_without_error(prompt, output_format):
    made = draw_preview(job(prompt, 768, 1344, output_format), 768, 1344, 3)
    assert Image.open(io.BytesIO(made.data)).size == (768, 1344)


def test_emoji_draw_as_the_replacement_glyph_not_as_a_box():
    line = lettering(SIZE)

    def drawn(text: str) -> bytes:
        image = Image.new("RGB", (SIZE * 6, SIZE * 2))
        line.draw(ImageDraw.Draw(image), (4, 4), clean(text), fill=(255, 255, 255))
        return image.tobytes()

    assert drawn("a🐱b") == drawn("a🐶b") == drawn(f"a{REPLACEMENT}b") != drawn("ab")
