"""Text data: bytes storage, the `<domain>/<class>/*.txt` and Amazon-review loaders, and the Debian index task,
all on generated files (plus the real apt index where the machine has one)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from text_helpers import write_debian_index, write_text_folder

from tlbench.config import DataConfig
from tlbench.data import build_domain, debian
from tlbench.data.text import MAX_TEXT_BYTES, TensorTexts, encode_texts, grouped_split
from tlbench.errors import ConfigError, DataError


def fresh(spec: str, root: Path, **fields):
    """Build a domain bypassing the per-process memo (tests change files between builds)."""
    from tlbench.data import DOMAINS, _discover

    _discover()
    family, _, argument = spec.partition(":")
    return DOMAINS[family](argument, DataConfig(root=str(root), **fields), 0)


# ------------------------------------------------------------------ bytes storage


def test_texts_round_trip_as_utf8_rows_and_clip_on_a_character_boundary():
    texts = ["naïve café ☕", "", "plain"]
    rows = encode_texts(texts)
    assert rows.dtype == torch.uint8 and rows.shape == (3, len(texts[0].encode()))
    assert TensorTexts(rows, torch.tensor([0, 1, 0])).texts == texts
    long = "é" * MAX_TEXT_BYTES  # 2 bytes each: the cut falls inside no character
    clipped = TensorTexts(encode_texts([long + "x"]), torch.tensor([0])).texts[0]
    assert clipped == "é" * (MAX_TEXT_BYTES // 2)
    with pytest.raises(ValueError, match="uint8 N×bytes"):
        TensorTexts(torch.zeros(2, 3, 4, dtype=torch.uint8), torch.tensor([0, 1]))


def test_grouped_split_keeps_every_group_in_one_split_and_is_fixed_by_names():
    groups = [f"src{i // 3}" for i in range(300)]
    parts = grouped_split(groups)
    assert sorted(i for p in parts for i in p) == list(range(300))
    where = {}
    for k, part in enumerate(parts):
        for i in part:
            assert where.setdefault(groups[i], k) == k
    assert all(len(p) > 0 for p in parts)
    assert [p.tolist() for p in grouped_split(list(reversed(groups)))] == [sorted(299 - i for i in p) for p in parts]


# ------------------------------------------------------------------ text folders


def test_text_folder_reads_classes_splits_and_fingerprints_content(tmp_path):
    domain = write_text_folder(tmp_path / "reviews", {"bad": [f"awful product {i}" for i in range(20)], "good": [f"great product {i}" for i in range(30)]})
    built = fresh(f"text_folder:{domain}", tmp_path)
    assert built.class_names == ["bad", "good"] and built.name == "text_folder:reviews"
    sizes = [len(built.train), len(built.val), len(built.test)]
    assert sum(sizes) == 50 and sizes == [40, 5, 5]
    seen = built.train.texts + built.val.texts + built.test.texts
    assert sorted(seen) == sorted([f"awful product {i}" for i in range(20)] + [f"great product {i}" for i in range(30)])
    labels = torch.cat([built.train.labels, built.val.labels, built.test.labels])
    assert all(t.startswith("great") == bool(y) for t, y in zip(seen, labels.tolist()))
    assert fresh(f"text_folder:{domain}", tmp_path).fingerprint == built.fingerprint
    (domain / "good" / "000.txt").write_text("changed")
    assert fresh(f"text_folder:{domain}", tmp_path).fingerprint != built.fingerprint


def test_text_folder_relative_path_is_under_data_root_and_mistakes_are_one_line(tmp_path):
    write_text_folder(tmp_path / "d", {"a": ["x"] * 10, "b": ["y"] * 10})
    assert fresh("text_folder:d", tmp_path).num_classes == 2
    with pytest.raises(DataError, match="is not a folder"):
        fresh("text_folder:missing", tmp_path)
    (tmp_path / "d" / "c").mkdir()
    with pytest.raises(DataError, match="has no \\*.txt files"):
        fresh("text_folder:d", tmp_path)
    with pytest.raises(ConfigError, match="needs a path"):
        fresh("text_folder", tmp_path)


# ------------------------------------------------------------------ Amazon reviews (Blitzer et al.)


def _review(title: str, text: str, rating: str) -> str:
    return (
        f"<review>\n<unique_id>\nX1\n</unique_id>\n<product_name>\nA thing: Books\n</product_name>\n<rating>\n{rating}\n</rating>\n"
        f"<title>\n{title}\n</title>\n<review_text>\n{text}\n</review_text>\n</review>\n"
    )


def test_amazon_reviews_read_title_and_text_per_review_from_the_archive_layout(tmp_path):
    folder = tmp_path / "sorted_data_acl" / "kitchen_&_housewares"
    folder.mkdir(parents=True)
    (folder / "positive.review").write_text("".join(_review(f"Love it {i}", f"Works & lasts {i}.", "5.0") for i in range(20)))
    (folder / "negative.review").write_text("".join(_review(f"Broke {i}", f"Cracked\non day {i}.", "1.0") for i in range(20)))
    built = fresh("amazon_reviews:k", tmp_path)
    assert built.name == "amazon_reviews:kitchen" and built.class_names == ["negative", "positive"]
    texts = built.train.texts + built.val.texts + built.test.texts
    labels = torch.cat([built.train.labels, built.val.labels, built.test.labels]).tolist()
    assert len(texts) == 40 and "Love it 3. Works & lasts 3." in texts and "Broke 7. Cracked on day 7." in texts
    assert all(t.startswith("Love") == bool(y) for t, y in zip(texts, labels))
    with pytest.raises(DataError, match="sorted_data_acl"):
        fresh("amazon_reviews:books", tmp_path)
    with pytest.raises(ConfigError, match="books, dvd, electronics, kitchen"):
        fresh("amazon_reviews:toys", tmp_path)


# ------------------------------------------------------------------ Debian index


@pytest.fixture
def no_system_lists(monkeypatch, tmp_path):
    """Only generated files count: the machine's own apt lists are hidden from the builder."""
    monkeypatch.setattr(debian, "SYSTEM_LISTS", tmp_path / "no-apt-lists")


def test_debian_domains_share_classes_split_sources_and_differ_in_text(tmp_path, no_system_lists):
    write_debian_index(tmp_path / "debian")
    synopsis, description = fresh("debian:synopsis", tmp_path), fresh("debian:description", tmp_path)
    assert synopsis.class_names == description.class_names == debian.SECTIONS
    short = synopsis.train.texts + synopsis.val.texts + synopsis.test.texts
    long = description.train.texts + description.val.texts + description.test.texts
    assert short and long
    assert not any("transitional" in t or "shared library" in t for t in short + long)  # dropped, or not a task Section
    assert all(t.startswith("This package provides") for t in long)  # the synopsis line is not part of it
    assert max(len(t.split()) for t in short) < min(len(t.split()) for t in long)
    # a source package lives in one domain only: (Section, variant) from the synopsis vs from the long text
    short_labels = torch.cat([synopsis.train.labels, synopsis.val.labels, synopsis.test.labels]).tolist()
    in_short = {(debian.SECTIONS[y], t.split("number ")[1]) for t, y in zip(short, short_labels) if "number " in t}
    in_long = {(t.split(" family")[0].split("of the ")[-1], t.split("It is variant ")[1].split()[0]) for t in long}
    assert in_short and in_long and not in_short & in_long


def test_debian_sibling_packages_stay_in_their_source_split(tmp_path, no_system_lists):
    write_debian_index(tmp_path / "debian", sources_per_section=12)
    built = fresh("debian:description", tmp_path)
    for split in ("train", "val", "test"):
        texts = getattr(built, split).texts
        for text in texts:
            if "holds the data files" in text:
                base = text.replace(" This package holds the data files.", "")
                assert base in texts, f"data sibling in {split} without its main package"


def test_debian_subsample_is_stratified_and_capped(tmp_path, no_system_lists):
    write_debian_index(tmp_path / "debian", sources_per_section=20)
    whole = fresh("debian:synopsis", tmp_path)
    small = fresh("debian:synopsis:60", tmp_path)
    n = lambda d: len(d.train) + len(d.val) + len(d.test)  # noqa: E731
    assert n(small) <= 60 + len(debian.SECTIONS) and n(small) < n(whole)
    labels = torch.cat([small.train.labels, small.val.labels, small.test.labels])
    assert set(labels.tolist()) == set(range(len(debian.SECTIONS)))
    with pytest.raises(ConfigError, match="synopsis or debian:description"):
        fresh("debian:titles", tmp_path)
    with pytest.raises(ConfigError, match="whole number"):
        fresh("debian:synopsis:5", tmp_path)


def test_debian_missing_files_are_one_line_errors_fast(tmp_path, no_system_lists):
    started = time.monotonic()
    with pytest.raises(DataError, match=r"no Debian package index \(Packages\)") as missing:
        fresh("debian:synopsis", tmp_path)
    assert "\n" not in str(missing.value)
    write_debian_index(tmp_path / "debian", translations=False, gz=False)
    assert len(fresh("debian:synopsis", tmp_path).train) > 0  # synopses need only Packages
    with pytest.raises(DataError, match="needs Debian's long descriptions") as no_long:
        fresh("debian:description", tmp_path)
    assert "\n" not in str(no_long.value) and time.monotonic() - started < 10


def test_debian_parsed_index_is_cached_and_reparsed_when_the_file_changes(tmp_path, no_system_lists, monkeypatch):
    folder = write_debian_index(tmp_path / "debian")
    fresh("debian:synopsis", tmp_path)
    calls = []
    real = debian.parse
    monkeypatch.setattr(debian, "parse", lambda *a: calls.append(a) or real(*a))
    fresh("debian:synopsis", tmp_path)
    assert calls == []  # from the cache
    write_debian_index(folder, sources_per_section=9)
    fresh("debian:synopsis", tmp_path)
    assert len(calls) == 1


def test_the_machines_own_apt_index_builds_the_synopsis_task():
    if debian.locate(DataConfig(), "Packages") is None:
        pytest.skip("no Debian package index on this machine")
    built = build_domain("debian:synopsis", DataConfig(), 0)
    counts = torch.bincount(built.train.labels, minlength=len(debian.SECTIONS))
    assert built.num_classes == 11 and int(counts.min()) >= 50  # enough for a 50-labels-per-class budget
