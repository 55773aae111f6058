"""Fashion-MNIST, and colour variants built like MNIST-M (Ganin & Lempitsky, 2015).

`fashion`: the real Fashion-MNIST, a benchmark that works offline — read from Debian's
`dataset-fashion-mnist` package, else `<data_root>/fashion-mnist/`, else downloaded when online.
Official train (60k) → train/val 54k/6k (per class, split seed 0), official test (10k) → test.

`fashion_m`: each image blended with a random patch of a real colour photo, out = |patch − image| per
channel (the MNIST-M rule), so `fashion → fashion_m` is a grey-to-colour shift like MNIST → MNIST-M
without any download: the photos are the ones scikit-learn and scikit-image ship. `mnist_m` applies
the same rule to MNIST with BSDS500 photos (the original recipe), when both are under data_root.
Blended sets keep the source's images in order, so their splits are the same; they are generated once
per (source data, photos, generation seed) and cached. Domain argument: the generation seed (default 0).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic_files import load_array_verified, save_array_with_digest
from ..errors import ConfigError, DataError
from ..paths import cache_dir, data_root
from . import register_domain
from .base import DomainSplits
from .idx import IDX_SET, find_idx_set, read_idx_set
from .image_folder import ROOT_HINT
from .torchvision_sets import DIGITS, mnist_arrays, official_splits, offline, try_download

log = logging.getLogger(__name__)

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
#: Where Debian's `dataset-fashion-mnist` package installs the four IDX files.
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
BLEND_VERSION = "1"
#: Natural colour photos bundled with scikit-image (used only when the file is installed locally).
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "ihc.png")
BSDS_FOLDERS = ("BSR/BSDS500/data/images/train", "BSDS500/data/images/train", "bsds500/images/train", "bsds500/train", "bsds500")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def fashion_arrays(cfg) -> Arrays:
    """(train images, train labels, test images, test labels) from the first place that has them."""
    from torchvision.datasets import FashionMNIST

    folder = data_root(cfg.root) / "fashion-mnist"
    candidates = (SYSTEM_DIR, folder, folder / "FashionMNIST" / "raw")

    def locate():
        for candidate in candidates:
            files = find_idx_set(candidate) if candidate.is_dir() else None
            if files:
                return files
        return None

    files = locate()
    if files is None and try_download("fashion", FashionMNIST, folder, [{"train": True}]):
        files = locate()
    if files is None:
        names = ", ".join(f"{name}(.gz)" for name in IDX_SET.values())
        download = "unset TLBENCH_OFFLINE and run once online to download it" if offline() else "run once with network access to download it"
        raise DataError(
            f"fashion: Fashion-MNIST not found; provide it one of three ways: (1) apt-get install dataset-fashion-mnist "
            f"(installs {SYSTEM_DIR}/), (2) copy {names} into {folder}/ ({ROOT_HINT}), (3) {download}"
        )
    return read_idx_set(files)


@register_domain("fashion")
def fashion(argument: str, cfg, seed: int) -> DomainSplits:
    """Fashion-MNIST, 28×28 grey; horizontal flips keep clothes' labels."""
    return official_splits("fashion", FASHION_CLASSES, *fashion_arrays(cfg), hflip_ok=True)


# ------------------------------------------------------------------ MNIST-M-style blending


def blend_with_photos(gray: np.ndarray, photos: list[np.ndarray], seed: int, chunk: int = 8192, progress=None) -> np.ndarray:
    """N×H×W uint8 grey images → N×3×H×W uint8: |random H×W patch of a random photo − image| per channel.

    Vectorised per chunk (one fancy-indexing gather of all patches); deterministic for (inputs, seed).
    `progress(done, total)` is called after each chunk."""
    n, height, width = gray.shape
    usable = [p for p in photos if p.shape[0] >= height and p.shape[1] >= width]
    if not usable:
        raise DataError(f"no background photo is at least {height}×{width} pixels")
    rng = np.random.default_rng(seed)
    which = rng.integers(len(usable), size=n)
    rows, cols = np.arange(height)[None, :, None], np.arange(width)[None, None, :]
    out = np.empty((n, 3, height, width), dtype=np.uint8)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        patches = np.empty((stop - start, height, width, 3), dtype=np.uint8)
        for index, photo in enumerate(usable):
            members = np.flatnonzero(which[start:stop] == index)
            top = rng.integers(0, photo.shape[0] - height + 1, size=len(members))[:, None, None]
            left = rng.integers(0, photo.shape[1] - width + 1, size=len(members))[:, None, None]
            patches[members] = photo[top + rows, left + cols]
        diff = np.abs(patches.astype(np.int16) - gray[start:stop, :, :, None].astype(np.int16))
        out[start:stop] = diff.astype(np.uint8).transpose(0, 3, 1, 2)
        if progress is not None:
            progress(stop, n)
    return out


def progress_reporter(what: str, every_s: float = 10.0):
    """A `progress(done, total)` that logs one line with an estimate of the time left, at most every
    `every_s` seconds: a first build of a data set takes minutes and must not look like a hang."""
    import time

    started, last = time.monotonic(), [time.monotonic()]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        left = (now - started) / done * (total - done) if done else float("nan")
        log.info("%s: %d/%d images (%.0f%%), about %.0f s left", what, done, total, 100 * done / total, left)

    return report


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read background photo {path}: {exc}") from None


def bundled_photo_paths() -> list[Path]:
    """Colour photos shipped inside installed packages: scikit-learn's 2 sample images and the
    scikit-image photos present on disk (never fetched)."""
    import sklearn.datasets

    paths = sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))
    try:
        import skimage.data

        folder = Path(skimage.data.__file__).parent
        paths += [folder / name for name in SKIMAGE_PHOTOS if (folder / name).is_file()]
    except ImportError:
        pass
    if not paths:
        raise DataError("fashion_m: no bundled colour photos found (scikit-learn's sample images are missing; reinstall scikit-learn)")
    return paths


def bsds500_photo_paths(cfg) -> list[Path]:
    root = data_root(cfg.root)
    for folder in BSDS_FOLDERS:
        paths = sorted((root / folder).glob("*.jpg"))
        if paths:
            return paths
    return []


def _photos_key(paths: list[Path]) -> str:
    return "|".join(f"{p.name}:{p.stat().st_size}" for p in paths)


def blended_domain(name: str, class_names: list[str], arrays: Arrays, photo_paths: list[Path], generation_seed: int, hflip_ok: bool) -> DomainSplits:
    """The blended colour version of `arrays` (train and test blended together, in order), cached by
    content of the grey images, the photos and the generation seed."""
    train_x, train_y, test_x, test_y = arrays
    gray = np.concatenate([train_x, test_x])
    digest = hashlib.sha256(f"{BLEND_VERSION}|{generation_seed}|{_photos_key(photo_paths)}|{gray.shape}".encode())
    digest.update(gray.tobytes())
    path = cache_dir("blended") / f"{name}_{generation_seed}_{digest.hexdigest()[:16]}.npy"
    colour = None
    if path.exists():
        colour, problem = load_array_verified(path)
        if colour is not None and (colour.shape != (len(gray), 3, *gray.shape[1:]) or colour.dtype != np.uint8):
            colour, problem = None, f"it holds {colour.dtype} {colour.shape}"
        if colour is None:
            log.warning("%s: rebuilding the cached blend %s: %s (a few minutes)", name, path.name, problem)
    if colour is None:
        log.info("%s: building the blended images once (cached in %s afterwards)", name, path.parent)
        colour = blend_with_photos(gray, [_read_rgb(p) for p in photo_paths], generation_seed, progress=progress_reporter(name))
        save_array_with_digest(path, colour)
    n_train = len(train_x)
    return official_splits(name, class_names, colour[:n_train], train_y, colour[n_train:], test_y, hflip_ok=hflip_ok)


def _generation_seed(name: str, argument: str) -> int:
    try:
        return int(argument or 0)
    except ValueError:
        raise ConfigError(f"data: '{name}:{argument}': the argument is the generation seed, an integer") from None


@register_domain("fashion_m")
def fashion_m(argument: str, cfg, seed: int) -> DomainSplits:
    """Fashion-MNIST blended with bundled colour photos, 3×28×28; same splits as `fashion`."""
    return blended_domain("fashion_m", FASHION_CLASSES, fashion_arrays(cfg), bundled_photo_paths(), _generation_seed("fashion_m", argument), hflip_ok=True)


@register_domain("mnist_m")
def mnist_m(argument: str, cfg, seed: int) -> DomainSplits:
    """MNIST-M rebuilt locally: MNIST blended with BSDS500 training photos, 3×28×28; same splits as `mnist`."""
    root = data_root(cfg.root)
    photos = bsds500_photo_paths(cfg)
    mnist_error: DataError | None = None
    try:
        arrays = mnist_arrays(cfg)
    except DataError as exc:
        mnist_error = exc
    if mnist_error is not None or not photos:
        needs = {f"MNIST (IDX files in {root / 'mnist'}/)": mnist_error, f"BSDS500 (*.jpg in {root / BSDS_FOLDERS[0]}/)": not photos}
        raise DataError(f"mnist_m: needs {' and '.join(needs)} ({ROOT_HINT}); missing: {', '.join(k for k, v in needs.items() if v)}")
    return blended_domain("mnist_m", DIGITS, arrays, photos, _generation_seed("mnist_m", argument), hflip_ok=False)
