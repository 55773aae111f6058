"""Dataset readers on small files written in the real formats (IDX, USPS bz2, SVHN .mat, image folders):
each loads them or fails with a one-line DataError that says what is wrong and where."""

from __future__ import annotations

import bz2
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench.config import DataConfig
from tlbench.data import build_domain
from tlbench.data import fashion as fashion_module
from tlbench.data.base import TensorImages
from tlbench.data.fashion import FASHION_CLASSES, blend_with_photos
from tlbench.data.idx import read_idx
from tlbench.data.image_folder import ImageFiles
from tlbench.data.loaders import make_loader
from tlbench.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TLBENCH_OFFLINE", "1")
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TLBENCH_DATA", raising=False)


def cfg_for(root: Path, **kw) -> DataConfig:
    return DataConfig(root=str(root), **kw)


# ------------------------------------------------------------------ IDX (MNIST, Fashion-MNIST)


def idx_bytes(array: np.ndarray) -> bytes:
    return b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int = 100, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / name).write_bytes(idx_bytes(array))
    return arrays


def test_mnist_reads_gzip_idx(tmp_path):
    arrays = write_idx_set(tmp_path / "mnist")
    domain = build_domain("mnist", cfg_for(tmp_path), seed=3)
    assert (len(domain.train), len(domain.val), len(domain.test)) == (90, 10, 20)
    assert domain.class_names == [str(d) for d in range(10)] and not domain.hflip_ok
    assert domain.train.images.shape[1:] == (1, 28, 28) and domain.train.images.dtype == torch.uint8
    assert torch.equal(domain.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.bincount(domain.val.labels).tolist() == [1] * 10  # stratified 90/10
    again = build_domain("mnist", cfg_for(tmp_path), seed=7)
    assert again.fingerprint == domain.fingerprint and torch.equal(again.val.images, domain.val.images)


def test_mnist_reads_plain_idx_in_torchvision_layout(tmp_path):
    write_idx_set(tmp_path / "mnist" / "MNIST" / "raw", gz=False)
    assert len(build_domain("mnist", cfg_for(tmp_path), 0).test) == 20


def test_truncated_idx_is_named(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_set(folder)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="truncated IDX file") as info:
        build_domain("mnist", cfg_for(tmp_path), 0)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_gzip_stream_is_named(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(500, np.uint8)))[:-30])
    with pytest.raises(DataError, match="truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_bad_magic_and_wrong_dimensions(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)
    labels = tmp_path / "labels"
    labels.write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DataError, match="expected a 3-dimensional"):
        read_idx(labels, ndim=3)
    assert read_idx(labels, ndim=1).shape == (5,)


def test_incomplete_idx_set_lists_missing_files(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_set(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"incomplete IDX dataset, missing t10k-labels-idx1-ubyte"):
        build_domain("mnist", cfg_for(tmp_path), 0)


def test_label_count_mismatch(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_set(folder)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(99, np.uint8))))
    with pytest.raises(DataError, match="99 labels for 100 images"):
        build_domain("mnist", cfg_for(tmp_path), 0)


def test_fashion_from_data_root(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_module, "SYSTEM_DIR", tmp_path / "not-installed")
    write_idx_set(tmp_path / "fashion-mnist")
    domain = build_domain("fashion", cfg_for(tmp_path), 0)
    assert domain.class_names == FASHION_CLASSES and domain.hflip_ok
    assert (len(domain.train), len(domain.val), len(domain.test)) == (90, 10, 20)


def test_fashion_missing_names_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_module, "SYSTEM_DIR", tmp_path / "not-installed")
    with pytest.raises(DataError) as info:
        build_domain("fashion", cfg_for(tmp_path), 0)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "fashion-mnist") in message and "train-images-idx3-ubyte(.gz)" in message
    assert "TLBENCH_OFFLINE" in message and "\n" not in message


def test_fashion_m_is_deterministic_colour_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_module, "SYSTEM_DIR", tmp_path / "not-installed")
    write_idx_set(tmp_path / "fashion-mnist")
    grey = build_domain("fashion", cfg_for(tmp_path), 0)
    colour = build_domain("fashion_m", cfg_for(tmp_path), 0)
    assert colour.train.images.shape == (90, 3, 28, 28) and colour.train.images.dtype == torch.uint8
    assert torch.equal(colour.train.labels, grey.train.labels) and torch.equal(colour.test.labels, grey.test.labels)
    assert not torch.equal(colour.train.images, grey.train.images.expand(-1, 3, -1, -1))
    assert colour.fingerprint != grey.fingerprint
    cached = list((tmp_path / "cache" / "blended").glob("fashion_m_0_*.npy"))
    assert len(cached) == 1
    again = build_domain("fashion_m", cfg_for(tmp_path), 5)  # run seed does not change the data
    assert torch.equal(again.train.images, colour.train.images) and again.fingerprint == colour.fingerprint
    other = build_domain("fashion_m:1", cfg_for(tmp_path), 0)
    assert not torch.equal(other.train.images, colour.train.images)
    with pytest.raises(ConfigError, match="generation seed"):
        build_domain("fashion_m:abc", cfg_for(tmp_path), 0)


def test_blend_rule_is_absolute_difference():
    gray = np.array([[[0, 100], [200, 255]]], dtype=np.uint8)
    photo = np.full((2, 2, 3), 150, dtype=np.uint8)
    photo[..., 2] = 0
    out = blend_with_photos(gray, [photo], seed=0)
    assert out.shape == (1, 3, 2, 2)
    assert out[0, 0].tolist() == [[150, 50], [50, 105]] and out[0, 2].tolist() == [[0, 100], [200, 255]]


def write_bsds(root: Path, count: int = 3) -> None:
    folder = root / "BSR" / "BSDS500" / "data" / "images" / "train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def test_mnist_m_needs_mnist_and_bsds500(tmp_path):
    with pytest.raises(DataError) as info:
        build_domain("mnist_m", cfg_for(tmp_path), 0)
    assert "missing: MNIST" in str(info.value) and "BSDS500" in str(info.value)
    write_idx_set(tmp_path / "mnist")
    with pytest.raises(DataError, match=r"missing: BSDS500 \(\*\.jpg in .*BSR/BSDS500/data/images/train/\)"):
        build_domain("mnist_m", cfg_for(tmp_path), 0)
    write_bsds(tmp_path)
    domain = build_domain("mnist_m", cfg_for(tmp_path), 0)
    assert domain.train.images.shape == (90, 3, 28, 28) and domain.class_names == [str(d) for d in range(10)]


# ------------------------------------------------------------------ USPS (bz2 libsvm) and SVHN (.mat)


def write_usps(path: Path, images: np.ndarray, labels: np.ndarray, lines: list[str] | None = None) -> None:
    """libsvm lines `label 1:v … 256:v` with label 1..10 and values in [-1, 1], bz2-compressed."""
    if lines is None:
        values = images.reshape(len(images), -1) / 255.0 * 2 - 1
        lines = [f"{label + 1} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(row)) for row, label in zip(values, labels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


def test_usps_reads_bz2_libsvm(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.choice(np.array([0, 255], dtype=np.uint8), size=(100, 16, 16))
    labels = np.arange(100) % 10
    write_usps(tmp_path / "usps" / "usps.bz2", images, labels)
    write_usps(tmp_path / "usps" / "usps.t.bz2", images[:20], labels[:20])
    domain = build_domain("usps", cfg_for(tmp_path), 0)
    assert (len(domain.train), len(domain.val), len(domain.test)) == (90, 10, 20)
    assert domain.test.images.shape == (20, 1, 16, 16)
    assert torch.equal(domain.test.images[:, 0], torch.from_numpy(images[:20]))
    assert domain.test.labels.tolist() == labels[:20].tolist()


def test_usps_malformed_line_is_named(tmp_path):
    write_usps(tmp_path / "usps" / "usps.bz2", None, None, lines=["3 1:0.5 2:-1"])  # 2 values, not 256
    write_usps(tmp_path / "usps" / "usps.t.bz2", None, None, lines=["3 1:0.5 2:-1"])
    with pytest.raises(DataError, match="not a valid USPS file") as info:
        build_domain("usps", cfg_for(tmp_path), 0)
    assert str(tmp_path / "usps" / "usps.bz2") in str(info.value)


def write_svhn(path: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 1..10, 10 = digit 0
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"X": x, "y": y})
    return x, y


def test_svhn_reads_mat_and_maps_10_to_0(tmp_path):
    write_svhn(tmp_path / "svhn" / "train_32x32.mat", 100)
    x, y = write_svhn(tmp_path / "svhn" / "test_32x32.mat", 20, seed=1)
    domain = build_domain("svhn", cfg_for(tmp_path), 0)
    assert domain.test.images.shape == (20, 3, 32, 32)
    assert torch.equal(domain.test.images[3], torch.from_numpy(x[..., 3].transpose(2, 0, 1).copy()))
    assert domain.test.labels.tolist() == (y.ravel() % 10).tolist() and 0 in domain.test.labels.tolist()
    assert (len(domain.train), len(domain.val)) == (90, 10)


def test_svhn_wrong_layout_is_named(tmp_path):
    from scipy.io import savemat

    (tmp_path / "svhn").mkdir()
    savemat(str(tmp_path / "svhn" / "train_32x32.mat"), {"X": np.zeros((5, 32, 32, 3), np.uint8), "y": np.ones((5, 1))})
    write_svhn(tmp_path / "svhn" / "test_32x32.mat", 10)
    with pytest.raises(DataError, match=r"train_32x32\.mat: X must be uint8 of shape \(32, 32, 3, N\)"):
        build_domain("svhn", cfg_for(tmp_path), 0)


@pytest.mark.parametrize(
    "family, expected",
    [
        ("svhn", "train_32x32.mat and test_32x32.mat"),
        ("usps", "usps.bz2 and usps.t.bz2"),
        ("cifar10", "cifar-10-batches-py/{data_batch_1"),
        ("stl10", "stl10_binary/{train_X.bin"),
        ("mnist", "train-images-idx3-ubyte(.gz)"),
    ],
)
def test_missing_dataset_offline_says_what_to_put_where(tmp_path, family, expected):
    with pytest.raises(DataError) as info:
        build_domain(family, cfg_for(tmp_path), 0)
    message = str(info.value)
    assert expected in message and str(tmp_path / family) in message and "TLBENCH_OFFLINE=1" in message


# ------------------------------------------------------------------ image folders


def write_image(path: Path, seed: int, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path)


def write_domain(folder: Path, classes=("back_pack", "bike", "calculator"), per_class: int = 10) -> None:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(folder / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}", seed=100 * c + i)


def test_office31_domain_streams_fixed_size_images(tmp_path):
    write_domain(tmp_path / "office31" / "amazon")
    domain = build_domain("office31:amazon", cfg_for(tmp_path, image_size=24), 0)
    assert domain.name == "office31:amazon" and domain.class_names == ["back_pack", "bike", "calculator"]
    assert (len(domain.train), len(domain.val), len(domain.test)) == (24, 3, 3)  # 0.8/0.1/0.1 per class
    image, label = domain.train[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 24) and int(label) == int(domain.train.labels[0])
    assert domain.hflip_ok and domain.fingerprint
    assert build_domain("office31:a", cfg_for(tmp_path, image_size=24), 0).fingerprint == domain.fingerprint


def test_folder_stream_batches_through_worker(tmp_path):
    write_domain(tmp_path / "d", per_class=10)
    domain = build_domain(f"folder:{tmp_path / 'd'}", cfg_for(tmp_path, image_size=16), 0)
    assert isinstance(domain.train, ImageFiles)
    images, labels = next(iter(make_loader(domain.train, batch_size=4, train=True, seed=0, num_workers=1)))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8 and labels.shape == (4,)


def test_official_office31_images_level_and_case_are_accepted(tmp_path):
    write_domain(tmp_path / "Office31" / "DSLR" / "images")
    assert build_domain("office31:dslr", cfg_for(tmp_path), 0).num_classes == 3


def test_corrupt_image_is_reported_by_path(tmp_path):
    write_domain(tmp_path / "office31" / "webcam")
    bad = tmp_path / "office31" / "webcam" / "bike" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DataError, match="1 unreadable image") as info:
        build_domain("office31:webcam", cfg_for(tmp_path), 0)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_empty_class_is_named(tmp_path):
    write_domain(tmp_path / "pacs" / "photo")
    (tmp_path / "pacs" / "photo" / "zebra").mkdir()
    (tmp_path / "pacs" / "photo" / "zebra" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*photo/zebra has no images"):
        build_domain("pacs:photo", cfg_for(tmp_path), 0)


def test_mismatched_classes_across_domains_fail_before_training(tmp_path):
    from tlbench.data.datamodule import DomainDataModule

    write_domain(tmp_path / "office31" / "amazon")
    write_domain(tmp_path / "office31" / "webcam", classes=("back_pack", "bike", "desk_chair"))
    cfg = cfg_for(tmp_path, source="office31:amazon", target="office31:webcam")
    with pytest.raises(DataError, match="class sets differ"):
        DomainDataModule(cfg, seed=0)


def test_missing_folders_say_where_they_looked(tmp_path):
    with pytest.raises(DataError) as info:
        build_domain("office_home:Art", cfg_for(tmp_path), 0)
    message = str(info.value)
    assert str(tmp_path / "office_home") in message and "data.root" in message and "TLBENCH_DATA" in message
    write_domain(tmp_path / "office_home" / "Art")
    with pytest.raises(DataError, match=r"domain folder 'Clipart' not found .*\(found: Art\)"):
        build_domain("office_home:Clipart", cfg_for(tmp_path), 0)
    with pytest.raises(ConfigError, match="choose one of: Art, Clipart, Product, Real_World"):
        build_domain("office_home:Sketch", cfg_for(tmp_path), 0)
    with pytest.raises(DataError, match="is not a folder"):
        build_domain(f"folder:{tmp_path / 'nowhere'}", cfg_for(tmp_path), 0)


def test_manifest_is_cached_and_refreshed_when_files_change(tmp_path):
    folder = tmp_path / "mine"
    write_domain(folder, per_class=10)
    first = build_domain(f"folder:{folder}", cfg_for(tmp_path), 0)
    assert len(list((tmp_path / "cache" / "manifests").glob("*.json"))) == 1
    assert build_domain(f"folder:{folder}", cfg_for(tmp_path), 0).fingerprint == first.fingerprint
    write_image(folder / "bike" / "new.png", seed=999)
    refreshed = build_domain(f"folder:{folder}", cfg_for(tmp_path), 0)
    assert refreshed.fingerprint != first.fingerprint
    assert len(refreshed.train) + len(refreshed.val) + len(refreshed.test) == 31


# ------------------------------------------------------------------ the real Fashion-MNIST, where installed


@pytest.mark.skipif(
    not (fashion_module.SYSTEM_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_debian_package(tmp_path):
    domain = build_domain("fashion", cfg_for(tmp_path), 0)
    assert isinstance(domain.train, TensorImages)
    assert (len(domain.train), len(domain.val), len(domain.test)) == (54000, 6000, 10000)
    assert domain.train.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(domain.test.labels).tolist() == [1000] * 10
    assert torch.bincount(domain.val.labels).tolist() == [600] * 10


def test_too_small_classes_fail_with_split_message(tmp_path):
    write_domain(tmp_path / "tiny", per_class=2)
    with pytest.raises(DataError, match="the val split is empty: too few images per class to split them 0.8/0.1/0.1"):
        build_domain(f"folder:{tmp_path / 'tiny'}", cfg_for(tmp_path), 0)


def test_concurrent_writers_of_one_cache_entry_never_share_a_temp_file(tmp_path):
    """Two sweep workers building the same blended-image cache at once: each writes its own temp file, the
    entry ends whole, and no temp file is left behind (a shared name made one worker's rename fail)."""
    import threading

    import numpy as np

    from tlbench.atomic_files import atomic_write

    target = tmp_path / "cache" / "entry.npy"
    arrays = [np.full((64, 64), i, dtype=np.uint8) for i in range(8)]
    errors = []

    def writer(array):
        try:
            atomic_write(target, lambda handle: np.save(handle, array))
        except Exception as exc:  # pragma: no cover - the failure this test exists to catch
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(a,)) for a in arrays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored = np.load(target)
    assert stored.shape == (64, 64) and len(set(stored.ravel())) == 1  # one writer's whole array
    assert sorted(p.name for p in target.parent.iterdir()) == ["entry.npy"]


def test_a_failed_write_leaves_the_old_entry_and_no_temp_file(tmp_path):
    from tlbench.atomic_files import atomic_write

    target = tmp_path / "entry.json"
    target.write_bytes(b"old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["entry.json"]


def test_feature_cache_entries_are_verified_and_rebuilt_when_damaged_or_for_another_key(tmp_path, monkeypatch, caplog):
    """Flipped bytes, another split's entry copied over, a truncated file: each is noticed, said in one line,
    and rebuilt — never trained on."""
    import logging

    import torch

    from tlbench.api import build, compose
    from tlbench.data.base import TensorImages
    from tlbench.feature_cache import featurize_split

    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path))
    backbone = build(compose(["backbone=small_cnn", "data=digits", "data.synthetic_size=200"]))[0].backbone
    generator = torch.Generator().manual_seed(0)
    splits = {
        name: TensorImages(torch.randint(0, 255, (40, 3, 16, 16), dtype=torch.uint8, generator=generator), torch.arange(40) % 4) for name in ("train", "val")
    }
    keys = {name: {"split": name} for name in splits}
    fresh = {name: featurize_split(backbone, splits[name], keys[name]).images.clone() for name in splits}
    entries = {
        name: next(p for p in (tmp_path / "features").glob("*.pt") if torch.load(p, weights_only=True)["key"].endswith(f'"{name}"}}')) for name in splits
    }

    def damage_and_reload(how):
        how(entries["train"])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tlbench.feature_cache"):
            again = featurize_split(backbone, splits["train"], keys["train"]).images
        assert torch.equal(again, fresh["train"])
        return " ".join(r.getMessage() for r in caplog.records)

    def flip(path):
        raw = bytearray(path.read_bytes())
        middle = len(raw) // 2
        raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
        path.write_bytes(bytes(raw))

    assert "rebuilding" in damage_and_reload(flip)
    assert "another split" in damage_and_reload(lambda p: p.write_bytes(entries["val"].read_bytes()))
    assert "unreadable" in damage_and_reload(lambda p: p.write_bytes(p.read_bytes()[:100]))
    assert damage_and_reload(lambda p: None) == ""  # a whole, matching entry is used silently


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_generated_digits_file_is_regenerated_with_one_line(damage, tmp_path, monkeypatch, caplog):
    import logging

    import numpy as np

    from tlbench.data.digits import cached_synthetic_digits

    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path))
    counts, labels = cached_synthetic_digits(60, seed=3)
    (path,) = (tmp_path / "synthetic_digits").glob("*.npz")
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        middle = len(raw) // 2
        raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="tlbench.data.digits"):
        again_counts, again_labels = cached_synthetic_digits(60, seed=3)
    assert np.array_equal(again_counts, counts) and np.array_equal(again_labels, labels)
    assert [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]


def test_a_temp_file_left_by_a_dead_writer_is_removed_by_the_next_write_and_a_live_one_is_kept(tmp_path):
    import os
    import time

    from tlbench.atomic_files import STALE_AFTER_S, atomic_write

    target = tmp_path / "entry.npy"
    dead, live = tmp_path / ".entry.npy.111-deadbeef.tmp", tmp_path / ".entry.npy.222-cafecafe.tmp"
    dead.write_bytes(b"x" * 1000)
    live.write_bytes(b"y")
    old = time.time() - STALE_AFTER_S - 60
    os.utime(dead, (old, old))
    atomic_write(target, lambda handle: handle.write(b"whole"))
    assert target.read_bytes() == b"whole" and not dead.exists() and live.exists()


def test_a_damaged_blended_image_cache_is_rebuilt_with_one_line(tmp_path, monkeypatch, caplog):
    """The Fashion-MNIST-M blend is verified against the digest written with it: flipped bytes or a missing
    digest rebuild it (the same images), said in one line."""
    import logging

    import numpy as np
    from PIL import Image

    from tlbench.data.fashion import blended_domain

    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    photos = []
    for index in range(2):
        photo = tmp_path / f"photo{index}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photo)
        photos.append(photo)
    grey = rng.integers(0, 255, (48, 28, 28), dtype=np.uint8)
    arrays = (grey[:40], np.arange(40) % 2, grey[40:], np.arange(8) % 2)
    first = blended_domain("tiny_m", ["a", "b"], arrays, photos, 0, True)
    (entry,) = (tmp_path / "cache" / "blended").glob("*.npy")
    for damage in ("flip", "no digest"):
        if damage == "flip":
            raw = bytearray(entry.read_bytes())
            raw[-200:-100] = bytes(b ^ 0xFF for b in raw[-200:-100])
            entry.write_bytes(bytes(raw))
        else:
            entry.with_name(entry.name + ".sha256").unlink()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tlbench.data.fashion"):
            again = blended_domain("tiny_m", ["a", "b"], arrays, photos, 0, True)
        assert again.fingerprint == first.fingerprint
        assert len([r for r in caplog.records if "rebuilding the cached blend" in r.getMessage()]) == 1, damage


def test_a_long_first_build_reports_its_progress_with_the_time_left(caplog):
    import logging

    import numpy as np

    from tlbench.data.fashion import blend_with_photos, progress_reporter

    gray = np.zeros((20, 8, 8), dtype=np.uint8)
    photo = np.full((16, 16, 3), 100, dtype=np.uint8)
    with caplog.at_level(logging.INFO, logger="tlbench.data.fashion"):
        blended = blend_with_photos(gray, [photo], seed=0, chunk=5, progress=progress_reporter("fashion_m", every_s=0.0))
    lines = [r.getMessage() for r in caplog.records if "fashion_m" in r.getMessage()]
    assert blended.shape == (20, 3, 8, 8) and (blended == 100).all()
    assert len(lines) == 4 and lines[0].startswith("fashion_m: 5/20 images (25%), about") and lines[-1].startswith("fashion_m: 20/20 images (100%)")


@pytest.mark.parametrize(
    "kind, good, bad, message",
    [
        ("images", torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, 1, 4, 4), "images must be uint8 N×C×H×W, got torch.float32"),
        ("texts", torch.zeros(2, 5, dtype=torch.uint8), torch.zeros(2, 1, 5, dtype=torch.uint8), r"texts must be uint8 N×bytes, got torch.uint8 \(2, 1, 5\)"),
        ("features", torch.zeros(2, 3, dtype=torch.float16), torch.zeros(2, 3, dtype=torch.uint8), "features must be float N×D, got torch.uint8"),
    ],
)
def test_in_memory_examples_refuse_a_tensor_of_the_wrong_kind(kind, good, bad, message):
    from tlbench.data.base import TensorImages
    from tlbench.data.text import TensorTexts
    from tlbench.feature_cache import TensorFeatures

    holder = {"images": TensorImages, "texts": TensorTexts, "features": TensorFeatures}[kind]
    labels = torch.tensor([0, 1])
    assert len(holder(good, labels).subset([1])) == 1
    with pytest.raises(ValueError, match=message):
        holder(bad, labels)
    with pytest.raises(ValueError, match="labels shape \\(3,\\) does not match 2 examples"):
        holder(good, torch.tensor([0, 1, 2]))
