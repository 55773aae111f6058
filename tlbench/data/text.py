"""Text domains: labelled texts held in memory as UTF-8 bytes, and two loaders of files users have.

A text is stored as one zero-padded row of UTF-8 bytes in a uint8 tensor (`TensorTexts`), so text data
goes through the same in-memory batching, label budgets, fingerprints and feature cache as images, and
stays independent of any vocabulary: the backbone's tokenizer is its preprocessing
(tlbench/backbones/text_encoders.py). Families here:

- `text_folder:/path/to/domain`: any folder `<domain>/<class>/*.txt` (one text per file).
- `amazon_reviews:<books|dvd|electronics|kitchen>`: the multi-domain sentiment data of Blitzer, Dredze &
  Pereira (2007), `<root>/amazon_reviews/<domain>/{positive,negative}.review` as in its
  `sorted_data_acl` archive (the archive's own folder level is accepted too).

The Debian package-index task is in data/debian.py.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..paths import data_root
from . import register_domain
from .base import DomainSplits, InMemoryExamples, fingerprint_tensors, stratified_split

#: Longest stored text, in UTF-8 bytes (about 400 words: well beyond the 128-256 tokens an encoder reads).
MAX_TEXT_BYTES = 2048
#: train/val/test per class, split seed 0 (the same test set for every run seed), as for image folders.
TEXT_SPLIT = (0.8, 0.1, 0.1)
ROOT_HINT = "set data.root (or $TLBENCH_DATA) to the folder containing it"


class TensorTexts(InMemoryExamples):
    """In-memory texts: uint8 UTF-8 rows (N × bytes, zero-padded) with int64 labels."""

    ndim, dtype, described = 2, torch.uint8, "texts must be uint8 N×bytes"

    @property
    def texts(self) -> list[str]:
        from ..backbones.text_encoders import decode_rows

        return decode_rows(self.images)


def clip_utf8(text: str, limit: int = MAX_TEXT_BYTES) -> bytes:
    """`text` as UTF-8 of at most `limit` bytes, cut at a character boundary, without NUL bytes (the padding)."""
    data = text.replace("\0", " ").encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def encode_texts(texts: list[str], limit: int = MAX_TEXT_BYTES) -> torch.Tensor:
    """Texts → uint8 rows, zero-padded to the longest (at most `limit` bytes)."""
    encoded = [clip_utf8(t, limit) for t in texts]
    width = max([1, *map(len, encoded)])
    rows = np.zeros((len(encoded), width), dtype=np.uint8)
    for i, data in enumerate(encoded):
        rows[i, : len(data)] = np.frombuffer(data, dtype=np.uint8)
    return torch.from_numpy(rows)


def texts_domain(name: str, texts: list[str], labels, class_names: list[str], parts: list[np.ndarray], notes: dict | None = None) -> DomainSplits:
    """A DomainSplits of texts with the given train/val/test index arrays; fingerprinted on content."""
    rows = encode_texts(texts)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    for split, idx in zip(("train", "val", "test"), parts):
        if len(idx) == 0:
            raise DataError(f"{name}: the {split} split is empty ({len(texts)} texts); add texts")
    train, val, test = (TensorTexts(rows[torch.as_tensor(idx)], labels[torch.as_tensor(idx)]) for idx in parts)
    fingerprint = fingerprint_tensors(rows, labels, torch.tensor([len(p) for p in parts]))
    return DomainSplits(name, train, val, test, list(class_names), fingerprint, hflip_ok=False, notes=dict(notes or {}))


def stable_unit(key: str) -> float:
    """A number in [0, 1) fixed by `key` on every machine and Python (not `hash`, which is salted per process)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def grouped_split(groups: list[str], fractions=TEXT_SPLIT, salt: str = "split") -> list[np.ndarray]:
    """train/val/test indices where all examples of one group (e.g. one source package) land in the same
    split, so near-duplicate texts of a group never sit on both sides; fixed by the group names alone."""
    bounds = np.cumsum(fractions) / np.sum(fractions)
    place = np.array([int(np.searchsorted(bounds, stable_unit(f"{salt}:{g}"), side="right")) for g in groups])
    return [np.flatnonzero(place == k).astype(np.int64) for k in range(len(fractions))]


# ------------------------------------------------------------------ <domain>/<class>/*.txt


def read_text_folder(folder: Path, name: str) -> tuple[list[str], list[int], list[str]]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{name}: {folder} needs one sub-folder per class (found {len(classes)}), each holding *.txt files")
    texts, labels = [], []
    for label, class_folder in enumerate(classes):
        files = sorted(class_folder.glob("*.txt"))
        if not files:
            raise DataError(f"{name}: class folder {class_folder} has no *.txt files")
        for path in files:
            texts.append(path.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label)
    return texts, labels, [p.name for p in classes]


@register_domain("text_folder")
def text_folder(argument: str, cfg, seed: int) -> DomainSplits:
    """Any folder `<domain>/<class>/*.txt`: `text_folder:/abs/path/to/domain` (relative paths are under
    data.root). Split 0.8/0.1/0.1 per class, split seed 0; both domains of a run need the same class folders."""
    if not argument:
        raise ConfigError("data: 'text_folder' needs a path, e.g. 'text_folder:/data/my_texts/domain_a'")
    folder = Path(argument).expanduser()
    if not folder.is_absolute():
        folder = data_root(cfg.root) / folder
    if not folder.is_dir():
        raise DataError(f"text_folder: {folder} is not a folder; give 'text_folder:/abs/path/to/domain' laid out as <class>/*.txt")
    texts, labels, classes = read_text_folder(folder, "text_folder")
    parts = stratified_split(np.asarray(labels), TEXT_SPLIT, seed=0)
    return texts_domain(f"text_folder:{folder.name}", texts, labels, classes, parts)


# ------------------------------------------------------------------ Amazon multi-domain sentiment

AMAZON_DOMAINS = ("books", "dvd", "electronics", "kitchen")
AMAZON_ALIASES = {"b": "books", "d": "dvd", "e": "electronics", "k": "kitchen", "kitchen_&_housewares": "kitchen", "kitchen_housewares": "kitchen"}
AMAZON_FOLDERS = ("amazon_reviews", "amazon_reviews/sorted_data_acl", "sorted_data_acl", "amazon_reviews/sorted_data", "sorted_data")
AMAZON_CLASSES = ["negative", "positive"]
_REVIEW_TEXT = re.compile(r"<review_text>\s*(.*?)\s*</review_text>", re.S)
_TITLE = re.compile(r"<title>\s*(.*?)\s*</title>", re.S)


def read_reviews(path: Path) -> list[str]:
    """The texts of one `.review` file (pseudo-XML, not parseable as XML): title and review text of each review."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    reviews = []
    for block in raw.split("</review>"):
        body = _REVIEW_TEXT.search(block)
        if body is None:
            continue
        title = _TITLE.search(block)
        text = body.group(1) if title is None else f"{title.group(1)}. {body.group(1)}"
        reviews.append(" ".join(text.split()))
    return reviews


def locate_amazon(domain: str, cfg) -> Path:
    root = data_root(cfg.root)
    for folder in AMAZON_FOLDERS:
        base = root / folder
        for name in (domain, "kitchen_&_housewares" if domain == "kitchen" else domain):
            if (base / name / "positive.review").is_file():
                return base / name
    raise DataError(
        f"amazon_reviews: {domain} not found: looked for {root / AMAZON_FOLDERS[0] / domain / 'positive.review'} (and negative.review) "
        f"from Blitzer et al.'s multi-domain sentiment archive (sorted_data_acl); {ROOT_HINT}"
    )


@register_domain("amazon_reviews")
def amazon_reviews(argument: str, cfg, seed: int) -> DomainSplits:
    """One product domain of the multi-domain sentiment data (1,000 positive + 1,000 negative reviews in the
    balanced release), split 0.8/0.1/0.1 per class with split seed 0."""
    domain = AMAZON_ALIASES.get(argument.lower(), argument.lower())
    if domain not in AMAZON_DOMAINS:
        raise ConfigError(f"data: 'amazon_reviews:{argument}' is not a domain; choose one of: {', '.join(AMAZON_DOMAINS)}")
    folder = locate_amazon(domain, cfg)
    texts, labels = [], []
    for label, name in enumerate(AMAZON_CLASSES):
        path = folder / f"{name}.review"
        if not path.is_file():
            raise DataError(f"amazon_reviews: {path} is missing")
        found = read_reviews(path)
        if not found:
            raise DataError(f"amazon_reviews: {path} holds no <review_text> entries")
        texts += found
        labels += [label] * len(found)
    parts = stratified_split(np.asarray(labels), TEXT_SPLIT, seed=0)
    return texts_domain(f"amazon_reviews:{domain}", texts, labels, AMAZON_CLASSES, parts)
