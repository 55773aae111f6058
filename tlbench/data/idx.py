"""IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed, read with validation.

The format is tiny — two zero bytes, a type code, the number of dimensions, big-endian uint32 sizes,
then the values — so a hand-written reader lets a corrupt or truncated download fail with one line
that names the file instead of a reshape error deep inside numpy.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

#: IDX type code → numpy dtype (values are stored big-endian).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: The four files of an MNIST-style dataset, by role; each may also end in `.gz`.
IDX_SET = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _raw_bytes(path: Path) -> bytes:
    with open(path, "rb") as handle:
        head = handle.read(2)
    try:
        if head == b"\x1f\x8b":  # gzip magic, whatever the file is called
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except EOFError:
        raise DataError(f"{path}: truncated gzip file (download it again)") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(f"{path}: unreadable gzip file ({exc})") from None


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """The array stored in one IDX file, in native byte order; DataError naming the file if it is not
    a complete IDX file (bad magic, unknown type, wrong dimensions, truncated or with trailing bytes)."""
    path = Path(path)
    raw = _raw_bytes(path)
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dims_count = raw[3]
    if ndim is not None and dims_count != ndim:
        raise DataError(f"{path}: expected a {ndim}-dimensional IDX file, found {dims_count} dimensions")
    header = 4 + 4 * dims_count
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=dims_count, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise DataError(f"{path}: truncated IDX file: header says {shape} ({expected} bytes) but only {found} bytes follow")
    if found > expected:
        raise DataError(f"{path}: IDX file has {found - expected} unexpected trailing bytes after {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_set(folder: Path) -> dict[str, Path] | None:
    """The four standard files in `folder` (plain or .gz), None if none is there; a DataError if only
    some are, so a half-copied dataset is reported rather than silently skipped."""
    found: dict[str, Path] = {}
    for role, name in IDX_SET.items():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
    if not found:
        return None
    if len(found) < len(IDX_SET):
        missing = [IDX_SET[role] + "(.gz)" for role in IDX_SET if role not in found]
        raise DataError(f"{folder}: incomplete IDX dataset, missing {', '.join(missing)}")
    return found


def read_idx_set(files: dict[str, Path], num_classes: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images N×H×W uint8, train labels int64, test images, test labels), with counts and label
    ranges checked against each other."""
    arrays = []
    for part in ("train", "test"):
        images = read_idx(files[f"{part}_images"], ndim=3)
        labels = read_idx(files[f"{part}_labels"], ndim=1)
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise DataError(f"{files[f'{part}_images']}: expected unsigned-byte IDX images and labels")
        if len(images) != len(labels):
            raise DataError(f"{files[f'{part}_labels']}: {len(labels)} labels for {len(images)} images in {files[f'{part}_images']}")
        if labels.size and labels.max() >= num_classes:
            raise DataError(f"{files[f'{part}_labels']}: label {labels.max()} outside 0..{num_classes - 1}")
        arrays += [images, labels.astype(np.int64)]
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise DataError(f"{files['test_images']}: image size {arrays[2].shape[1:]} differs from training {arrays[0].shape[1:]}")
    return tuple(arrays)  # type: ignore[return-value]
