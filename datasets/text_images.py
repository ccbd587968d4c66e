"""Images with Chinese text rendered in them (price tags, a phone number, a shop sign).

They show the OCR path in the demo and its tests: a CLIP vector barely sees the
text, the OCR text search finds it. Rendered with the WenQuanYi Micro Hei font
(Debian package fonts-wqy-microhei, installed by scripts/setup.sh).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_PATHS = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/wqy-microhei/wqy-microhei.ttc"),
)


@dataclass(frozen=True)
class TextImageSpec:
    """One image: its file name, the lines written on it, colours."""

    name: str
    lines: tuple[str, ...]
    background: tuple[int, int, int]
    ink: tuple[int, int, int]


TEXT_IMAGES: tuple[TextImageSpec, ...] = (
    TextImageSpec("price_tag_apple", ("红富士苹果", "特价 ¥12.8/斤"), (255, 236, 160), (200, 20, 20)),
    TextImageSpec("price_tag_tea", ("西湖龙井", "原价 ¥298 现价 ¥199"), (230, 245, 225), (20, 90, 30)),
    TextImageSpec("phone_ad", ("专业开锁", "电话 13812345678"), (255, 255, 255), (10, 10, 10)),
    TextImageSpec("wechat_ad", ("代购 加微信", "微信号 shop_abc123"), (240, 240, 255), (30, 30, 120)),
    TextImageSpec("shop_sign", ("老王面馆", "营业时间 8:00-21:00"), (150, 20, 20), (255, 220, 80)),
    TextImageSpec("url_banner", ("官方网站", "www.example.com"), (20, 40, 80), (255, 255, 255)),
)


def font_path() -> Path:
    """The CJK font file; FileNotFoundError naming the package when it is missing."""
    for path in FONT_PATHS:
        if path.is_file():
            return path
    raise FileNotFoundError("no CJK font: install fonts-wqy-microhei (scripts/setup.sh does)")


def render_text_image(
    spec: TextImageSpec, width: int = 360, line_height: int = 56, seed: int = 0
) -> Image.Image:
    """The spec's lines in large type on a lightly noisy background."""
    font = ImageFont.truetype(str(font_path()), 30)
    height = line_height * len(spec.lines) + 30
    rng = np.random.default_rng(seed)
    base = np.empty((height, width, 3), dtype=np.int16)
    base[:] = spec.background
    base += rng.integers(-6, 7, size=base.shape, dtype=np.int16)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(spec.lines):
        draw.text((18, 16 + i * line_height), line, font=font, fill=spec.ink)
    return image


def text_image_jpeg(spec: TextImageSpec, seed: int = 0, quality: int = 92) -> bytes:
    """The rendered image as JPEG bytes."""
    out = io.BytesIO()
    render_text_image(spec, seed=seed).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def write_text_images(folder: Path) -> list[Path]:
    """Write every TEXT_IMAGES entry as `<name>.jpg` under `folder`; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, spec in enumerate(TEXT_IMAGES):
        path = folder / f"{spec.name}.jpg"
        path.write_bytes(text_image_jpeg(spec, seed=i))
        paths.append(path)
    return paths
