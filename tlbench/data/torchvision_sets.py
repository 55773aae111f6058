"""Standard benchmarks that torchvision can download: mnist, usps, svhn, cifar10, cifar100, stl10,
flowers102, oxford_pets — each under `<data_root>/<family>/` in torchvision's own layout.

torchvision is used to *download* (only when online: TLBENCH_OFFLINE=1 disables it, and a ≤5 s
connectivity probe avoids hanging on machines without network); the small datasets are *read* here,
with validation, so a missing or damaged file is one DataError naming it (torchvision's readers would
also insist on the official checksums, which rules out testing them on small files).

Small sets are decoded into memory (TensorImages, native size: the backbone's Preprocessing resizes
batches); flowers102 and oxford_pets stream from their JPEGs resized to `data.image_size`. Official
train → train/val (90/10 per class, split seed 0), official test → test; flowers102 keeps its
official val. Digit sets (mnist, usps, svhn) all use classes "0".."9", so any pair is a DA task.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Callable, Optional, TypeVar
from urllib.parse import urlparse

import numpy as np
import torch

from ..errors import DataError
from ..paths import data_root
from . import register_domain
from .base import DomainSplits, TensorImages, fingerprint_tensors, stratified_split
from .idx import find_idx_set, read_idx_set
from .image_folder import ROOT_HINT, ImageFiles, check_splits, fingerprint_files
from .safe_pickle import load_data_pickle

DIGITS = [str(d) for d in range(10)]
VAL_FRACTION = 0.1
PROBE_TIMEOUT_S = 5.0
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0
T = TypeVar("T")

# ------------------------------------------------------------------ downloading, only when possible

_reachable: dict[str, bool] = {}


def offline() -> bool:
    """TLBENCH_OFFLINE=1 (or true/yes) forbids any network access for data."""
    return os.environ.get("TLBENCH_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _first_url(value) -> Optional[str]:
    if isinstance(value, str):
        return value if value.startswith(("http://", "https://")) else None
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_url(item)
            if found:
                return found
    return None


def dataset_url(tv_class: type) -> Optional[str]:
    """The first download address a torchvision dataset class declares (attribute names vary by class)."""
    for attr in ("mirrors", "url", "resources", "split_list", "_download_url_prefix", "_RESOURCES"):
        found = _first_url(getattr(tv_class, attr, None))
        if found:
            return found
    return None


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Can a TCP connection to the URL's host be opened within `timeout` seconds (DNS included)?
    Probed in a daemon thread because name resolution ignores socket timeouts; remembered per host."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    if host not in _reachable:
        result = [False]

        def probe() -> None:
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                result[0] = True
            except OSError:
                pass

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout)
        _reachable[host] = result[0]
    return _reachable[host]


def try_download(name: str, tv_class: type, folder: Path, calls: list[dict]) -> bool:
    """Download with torchvision into `folder` (one constructor call per kwargs in `calls`) when online;
    False when offline or unreachable, DataError if a started download fails."""
    url = dataset_url(tv_class)
    if offline() or url is None or not reachable(url):
        return False
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)  # torchvision's urlopen has no timeout of its own
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for kwargs in calls:
            tv_class(str(folder), download=True, **kwargs)
    except Exception as exc:
        raise DataError(f"{name}: download into {folder} failed ({type(exc).__name__}: {exc}); put the files there by hand") from None
    finally:
        socket.setdefaulttimeout(previous)
    return True


def obtain(name: str, folder: Path, locate: Callable[[], Optional[T]], expected: str, tv_class: type, calls: list[dict]) -> T:
    """`locate()` on the files as they are, else after a download, else a DataError saying what to put where."""
    found = locate()
    if found is None and try_download(name, tv_class, folder, calls):
        found = locate()
    if found is None:
        how = "TLBENCH_OFFLINE=1 is set" if offline() else "no network to download it"
        raise DataError(f"{name}: not found: expected {expected} in {folder} ({ROOT_HINT}); {how}, so copy the files there")
    return found


# ------------------------------------------------------------------ shared split rule


def _nchw(images: np.ndarray) -> torch.Tensor:
    if images.ndim == 3:
        images = images[:, None]
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))


def official_splits(name: str, class_names: list[str], train_images, train_labels, test_images, test_labels, hflip_ok: bool = False) -> DomainSplits:
    """Official train → train/val (stratified 90/10, split seed 0), official test → test. Images are
    N×H×W (grey) or N×C×H×W uint8 arrays."""
    x_train, x_test = _nchw(train_images), _nchw(test_images)
    y_train = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    y_test = torch.from_numpy(np.asarray(test_labels, dtype=np.int64))
    full = TensorImages(x_train, y_train)
    train_idx, val_idx = stratified_split(y_train.numpy(), (1 - VAL_FRACTION, VAL_FRACTION), seed=0)
    splits = DomainSplits(
        name,
        full.subset(train_idx),
        full.subset(val_idx),
        TensorImages(x_test, y_test),
        list(class_names),
        fingerprint=fingerprint_tensors(x_train, y_train, x_test, y_test),
        hflip_ok=hflip_ok,
    )
    return check_splits(splits, (1 - VAL_FRACTION, VAL_FRACTION))


# ------------------------------------------------------------------ digits


def mnist_arrays(cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST IDX files from `<data_root>/mnist/` (or torchvision's `mnist/MNIST/raw/`)."""
    from torchvision.datasets import MNIST

    folder = data_root(cfg.root) / "mnist"

    def locate():
        for candidate in (folder, folder / "MNIST" / "raw"):
            if candidate.is_dir():
                files = find_idx_set(candidate)
                if files:
                    return files
        return None

    expected = "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz)"
    return read_idx_set(obtain("mnist", folder, locate, expected, MNIST, [{"train": True}]))


@register_domain("mnist")
def mnist(argument: str, cfg, seed: int) -> DomainSplits:
    """MNIST handwritten digits, 28×28 grey."""
    return official_splits("mnist", DIGITS, *mnist_arrays(cfg))


def _read_usps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import USPS

    try:
        data = USPS(str(path.parent), train=path.name == "usps.bz2", download=False)
    except (OSError, EOFError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: not a valid USPS file (bz2 libsvm lines 'label 1:v … 256:v'): {exc}") from None
    labels = np.asarray(data.targets, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be 1..10 in the file, found {labels.min() + 1}..{labels.max() + 1}")
    return data.data, labels


@register_domain("usps")
def usps(argument: str, cfg, seed: int) -> DomainSplits:
    """USPS handwritten digits, 16×16 grey (libsvm `usps.bz2` / `usps.t.bz2` under `<data_root>/usps/`)."""
    from torchvision.datasets import USPS

    folder = data_root(cfg.root) / "usps"
    locate = lambda: folder if all((folder / f).is_file() for f in ("usps.bz2", "usps.t.bz2")) else None  # noqa: E731
    obtain("usps", folder, locate, "usps.bz2 and usps.t.bz2", USPS, [{"train": True}, {"train": False}])
    return official_splits("usps", DIGITS, *_read_usps(folder / "usps.bz2"), *_read_usps(folder / "usps.t.bz2"))


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's MATLAB file: X is 32×32×3×N, y is N×1 with 10 standing for digit 0."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise DataError(f"{path}: not a readable MATLAB file ({exc})") from None
    images, labels = mat.get("X"), mat.get("y")
    if images is None or labels is None:
        raise DataError(f"{path}: expected variables X and y, found {', '.join(k for k in mat if not k.startswith('__'))}")
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.dtype != np.uint8:
        raise DataError(f"{path}: X must be uint8 of shape (32, 32, 3, N), got {images.dtype} {images.shape}")
    labels = labels.reshape(-1).astype(np.int64)
    if len(labels) != images.shape[3]:
        raise DataError(f"{path}: {len(labels)} labels for {images.shape[3]} images")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"{path}: labels must be 1..10 (10 = digit 0), found {labels.min()}..{labels.max()}")
    return images.transpose(3, 2, 0, 1), labels % 10


@register_domain("svhn")
def svhn(argument: str, cfg, seed: int) -> DomainSplits:
    """Street View House Numbers (cropped digits), 32×32 colour; the `extra` set is not used."""
    from torchvision.datasets import SVHN

    folder = data_root(cfg.root) / "svhn"
    locate = lambda: folder if all((folder / f).is_file() for f in ("train_32x32.mat", "test_32x32.mat")) else None  # noqa: E731
    obtain("svhn", folder, locate, "train_32x32.mat and test_32x32.mat", SVHN, [{"split": "train"}, {"split": "test"}])
    return official_splits("svhn", DIGITS, *_read_svhn(folder / "train_32x32.mat"), *_read_svhn(folder / "test_32x32.mat"))


# ------------------------------------------------------------------ objects


def _unpickle(path: Path) -> dict:
    """A CIFAR python batch, read with the restricted unpickler: a batch file cannot run code."""
    batch = load_data_pickle(path, "CIFAR python batch")
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR python batch (expected a dict, found {type(batch).__name__})")
    return batch


def _cifar_batches(paths: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            targets = np.asarray(batch[label_key], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise DataError(f"{path}: not a CIFAR batch (needs 'data' N×3072 and '{label_key}': {exc})") from None
        if len(data) != len(targets):
            raise DataError(f"{path}: {len(targets)} labels for {len(data)} images")
        images.append(data)
        labels.append(targets)
    return np.concatenate(images), np.concatenate(labels)


def _cifar(name: str, cfg, tv_class_name: str, subfolder: str, train_files: list[str], test_file: str, meta: tuple[str, str], label_key: str) -> DomainSplits:
    import torchvision.datasets as tvd

    folder = data_root(cfg.root) / name
    base = folder / subfolder
    needed = [*train_files, test_file, meta[0]]
    locate = lambda: base if all((base / f).is_file() for f in needed) else None  # noqa: E731
    obtain(name, folder, locate, f"{subfolder}/{{{', '.join(needed)}}}", getattr(tvd, tv_class_name), [{"train": True}])
    class_names = list(_unpickle(base / meta[0]).get(meta[1], []))
    x_train, y_train = _cifar_batches([base / f for f in train_files], label_key)
    x_test, y_test = _cifar_batches([base / test_file], label_key)
    if max(y_train.max(initial=0), y_test.max(initial=0)) >= len(class_names):
        raise DataError(f"{base / meta[0]}: {len(class_names)} class names but labels go up to {max(y_train.max(), y_test.max())}")
    return official_splits(name, class_names, x_train, y_train, x_test, y_test, hflip_ok=True)


@register_domain("cifar10")
def cifar10(argument: str, cfg, seed: int) -> DomainSplits:
    """CIFAR-10, 32×32 colour, 10 classes."""
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar("cifar10", cfg, "CIFAR10", "cifar-10-batches-py", train, "test_batch", ("batches.meta", "label_names"), "labels")


@register_domain("cifar100")
def cifar100(argument: str, cfg, seed: int) -> DomainSplits:
    """CIFAR-100, 32×32 colour, the 100 fine classes."""
    return _cifar("cifar100", cfg, "CIFAR100", "cifar-100-python", ["train"], "test", ("meta", "fine_label_names"), "fine_labels")


def _read_stl10(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """STL-10 binaries: uint8 images stored column-major as N×3×96×96, labels 1..10."""
    raw = np.fromfile(images_path, dtype=np.uint8)
    labels = np.fromfile(labels_path, dtype=np.uint8).astype(np.int64) - 1
    if raw.size % (3 * 96 * 96) or raw.size // (3 * 96 * 96) != len(labels):
        raise DataError(f"{images_path}: {raw.size} bytes is not {len(labels)} images of 3×96×96 (file truncated?)")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{labels_path}: labels must be 1..10")
    return raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2), labels


@register_domain("stl10")
def stl10(argument: str, cfg, seed: int) -> DomainSplits:
    """STL-10 labelled images (5k train, 8k test), 96×96 colour, in memory; the unlabelled set is not used."""
    from torchvision.datasets import STL10

    folder = data_root(cfg.root) / "stl10"
    base = folder / "stl10_binary"
    needed = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
    locate = lambda: base if all((base / f).is_file() for f in needed) else None  # noqa: E731
    obtain("stl10", folder, locate, f"stl10_binary/{{{', '.join(needed)}}}", STL10, [{"split": "train"}])
    class_names = (base / "class_names.txt").read_text().split()
    return official_splits(
        "stl10", class_names, *_read_stl10(base / "train_X.bin", base / "train_y.bin"), *_read_stl10(base / "test_X.bin", base / "test_y.bin"), hflip_ok=True
    )


def _torchvision_files(name: str, tv_class: type, folder: Path, split: str, files_attr: str) -> tuple[list[Path], list[int], list[str]]:
    """(image paths, labels, class names) of one split of a torchvision file-backed dataset."""
    try:
        data = tv_class(str(folder), split=split, download=False)
    except RuntimeError as exc:
        raise DataError(f"{name}: incomplete or corrupted files in {folder} ({exc})") from None
    classes = list(getattr(data, "classes", None) or sorted({str(label) for label in data._labels}))
    return list(getattr(data, files_attr)), list(data._labels), classes


def _streamed(name: str, folder: Path, parts: dict[str, tuple[list[Path], list[int]]], class_names: list[str], size: int) -> DomainSplits:
    every = [p for paths, _ in parts.values() for p in paths]
    labels = [label for _, labels in parts.values() for label in labels]
    fingerprint = fingerprint_files(folder, [str(Path(p).relative_to(folder)) for p in every], labels)
    splits = {part: ImageFiles(paths, labels, size) for part, (paths, labels) in parts.items()}
    return DomainSplits(name, splits["train"], splits["val"], splits["test"], class_names, fingerprint=fingerprint, hflip_ok=True)


@register_domain("flowers102")
def flowers102(argument: str, cfg, seed: int) -> DomainSplits:
    """Oxford Flowers-102 with its official train/val/test (10 images per class for train and val)."""
    from torchvision.datasets import Flowers102

    folder = data_root(cfg.root) / "flowers102"
    base = folder / "flowers-102"
    locate = lambda: base if (base / "jpg").is_dir() and (base / "imagelabels.mat").is_file() and (base / "setid.mat").is_file() else None  # noqa: E731
    obtain("flowers102", folder, locate, "flowers-102/{jpg/, imagelabels.mat, setid.mat}", Flowers102, [{"split": "train"}])
    parts, classes = {}, []
    for part in ("train", "val", "test"):
        paths, labels, classes = _torchvision_files("flowers102", Flowers102, folder, part, "_image_files")
        parts[part] = (paths, labels)
    return _streamed("flowers102", folder, parts, classes, cfg.image_size)


@register_domain("oxford_pets")
def oxford_pets(argument: str, cfg, seed: int) -> DomainSplits:
    """Oxford-IIIT Pet, 37 breeds; official trainval → train/val (90/10 per class, split seed 0), test → test."""
    from torchvision.datasets import OxfordIIITPet

    folder = data_root(cfg.root) / "oxford_pets"
    base = folder / "oxford-iiit-pet"
    locate = lambda: base if (base / "images").is_dir() and (base / "annotations" / "trainval.txt").is_file() else None  # noqa: E731
    obtain("oxford_pets", folder, locate, "oxford-iiit-pet/{images/, annotations/trainval.txt, annotations/test.txt}", OxfordIIITPet, [{"split": "trainval"}])
    paths, labels, classes = _torchvision_files("oxford_pets", OxfordIIITPet, folder, "trainval", "_images")
    train_idx, val_idx = stratified_split(np.asarray(labels), (1 - VAL_FRACTION, VAL_FRACTION), seed=0)
    test_paths, test_labels, _ = _torchvision_files("oxford_pets", OxfordIIITPet, folder, "test", "_images")
    parts = {
        "train": ([paths[i] for i in train_idx], [labels[i] for i in train_idx]),
        "val": ([paths[i] for i in val_idx], [labels[i] for i in val_idx]),
        "test": (test_paths, test_labels),
    }
    return _streamed("oxford_pets", folder, parts, classes, cfg.image_size)
