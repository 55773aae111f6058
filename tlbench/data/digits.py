"""The embedded default task: synthetic font digits (source) → real handwritten digits (target).

Target: scikit-learn's bundled handwritten digits (UCI optdigits, 1,797 images): 32×32 binary bitmaps
reduced to 8×8 by counting set pixels in 4×4 blocks (values 0..16). The source is rendered with the TTF
fonts matplotlib ships and reduced by exactly the same acquisition process, so the domains differ in
what matters for adaptation (printed vs handwritten shapes), not in file format.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..atomic_files import atomic_write
from ..errors import DataError
from ..paths import cache_dir
from . import register_domain
from .base import DomainSplits, TensorImages, fingerprint_tensors, stratified_split

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
CLASS_NAMES = [str(d) for d in range(10)]
SOURCE_SPLIT = (0.8, 0.1, 0.1)
TARGET_SPLIT = (0.5, 0.2, 0.3)
_NON_TEXT_FONTS = ("LastResort", "Display", "STIXSiz", "STIXNonUni", "cmex", "cmsy")


def digit_fonts() -> list[Path]:
    """The matplotlib-bundled TTF fonts that have real glyphs for 0-9."""
    import matplotlib
    from fontTools.ttLib import TTFont

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = []
    for path in sorted(folder.glob("*.ttf")):
        if any(marker in path.name for marker in _NON_TEXT_FONTS):
            continue
        cmap = TTFont(path, lazy=True).getBestCmap() or {}
        if all(ord(d) in cmap for d in CLASS_NAMES):
            fonts.append(path)
    if not fonts:
        raise DataError(f"no TTF fonts with digit glyphs found under {folder}; reinstall matplotlib")
    return fonts


def _render_bitmap(digit: str, font: ImageFont.FreeTypeFont, rng: np.random.Generator) -> np.ndarray:
    """One 32×32 binary bitmap: glyph with random stroke, rotation, scale and position."""
    canvas = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(canvas).text((48, 48), digit, fill=255, font=font, anchor="mm", stroke_width=int(rng.integers(0, 3)), stroke_fill=255)
    canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
    box = canvas.getbbox()
    glyph = canvas.crop(box)
    height = int(rng.integers(24, 33))
    width = max(1, min(32, round(glyph.width * height / glyph.height * rng.uniform(0.8, 1.2))))
    glyph = glyph.resize((width, height), Image.BILINEAR)
    bitmap = Image.new("L", (32, 32), 0)
    left = int(rng.integers(0, 32 - width + 1))
    top = int(rng.integers(0, 32 - height + 1))
    bitmap.paste(glyph, (left, top))
    return np.asarray(bitmap) > 96


def block_counts(bitmaps: np.ndarray) -> np.ndarray:
    """N×32×32 binary → N×8×8 counts of set pixels per 4×4 block (0..16), the optdigits reduction."""
    n = bitmaps.shape[0]
    return bitmaps.reshape(n, 8, 4, 8, 4).sum(axis=(2, 4)).astype(np.uint8)


def to_uint8(counts: np.ndarray) -> torch.Tensor:
    """0..16 counts → uint8 0..255 images N×1×8×8."""
    return torch.from_numpy(np.round(counts.astype(np.float32) * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)


def generate_synthetic_digits(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`size` balanced samples (counts 0..16, labels); deterministic for (size, seed, fonts)."""
    rng = np.random.default_rng(seed)
    fonts = digit_fonts()
    labels = np.arange(size) % 10
    rng.shuffle(labels)
    bitmaps = np.empty((size, 32, 32), dtype=bool)
    loaded: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
    for i, label in enumerate(labels):
        key = (int(rng.integers(len(fonts))), int(rng.integers(40, 64)))
        if key not in loaded:
            loaded[key] = ImageFont.truetype(str(fonts[key[0]]), key[1])
        bitmaps[i] = _render_bitmap(str(label), loaded[key], rng)
    return block_counts(bitmaps), labels.astype(np.int64)


def cached_synthetic_digits(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated once per (size, seed, generator version, font set), then read from the cache."""
    font_names = ",".join(p.name for p in digit_fonts())
    key = hashlib.sha256(f"{GENERATOR_VERSION}|{size}|{seed}|{font_names}".encode()).hexdigest()[:12]
    path = cache_dir("synthetic_digits") / f"digits_{size}_{seed}_{key}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                return stored["counts"], stored["labels"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # truncated or damaged: regenerate
            log.warning("synthetic digits cache: rebuilding %s: it is unreadable (%s)", path.name, type(exc).__name__)
            path.unlink(missing_ok=True)
    counts, labels = generate_synthetic_digits(size, seed)
    atomic_write(path, lambda handle: np.savez_compressed(handle, counts=counts, labels=labels))
    return counts, labels


def _splits(name: str, images: torch.Tensor, labels: np.ndarray, fractions, seed: int) -> DomainSplits:
    labels_t = torch.from_numpy(labels)
    full = TensorImages(images, labels_t)
    train, val, test = (full.subset(idx) for idx in stratified_split(labels, fractions, seed))
    return DomainSplits(name, train, val, test, CLASS_NAMES, fingerprint=fingerprint_tensors(images, labels_t))


@register_domain("synthetic_digits")
def synthetic_digits(argument: str, cfg, seed: int) -> DomainSplits:
    """Font-rendered digits; `argument` (optional) is the generation seed, default 0."""
    counts, labels = cached_synthetic_digits(cfg.synthetic_size, int(argument or 0))
    return _splits("synthetic_digits", to_uint8(counts), labels, SOURCE_SPLIT, seed=0)


@register_domain("sklearn_digits")
def sklearn_digits(argument: str, cfg, seed: int) -> DomainSplits:
    """scikit-learn's bundled real handwritten digits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    counts = bunch.images.astype(np.uint8)
    return _splits("sklearn_digits", to_uint8(counts), bunch.target.astype(np.int64), TARGET_SPLIT, seed=0)
