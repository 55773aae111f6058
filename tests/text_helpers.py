"""Small generated text data for the text tests: a Debian-style index (Packages + Translation-en) and folders."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from tlbench.data.debian import SECTIONS

#: A topic word per Section, so a classifier has something real to learn from the generated texts.
TOPIC = {
    "admin": "system administration tool for servers",
    "editors": "text editor with syntax highlighting",
    "games": "arcade game with levels and monsters",
    "graphics": "image viewer and drawing program",
    "mail": "email client and mail transfer agent",
    "math": "computer algebra and numerical mathematics",
    "net": "network daemon for sockets and routing",
    "science": "scientific data analysis for physics",
    "sound": "audio player and sound mixer",
    "text": "text processing and document conversion",
    "web": "web server and browser framework",
}


def write_debian_index(folder: Path, sources_per_section: int = 8, translations: bool = True, gz: bool = True) -> Path:
    """Packages (+ Translation-en) under `folder`, `sources_per_section` source packages per Section, two
    binary packages for every third source (a sibling that must stay in its source's split and domain),
    plus a transitional package and one of a Section outside the task. Returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    packages, translated = [], []

    def add(name: str, source: str, section: str, synopsis: str, long: str) -> None:
        md5 = hashlib.md5(f"{synopsis}\n{long}".encode()).hexdigest()
        packages.append(f"Package: {name}\nSource: {source}\nVersion: 1.0\nSection: {section}\nDescription: {synopsis}\nDescription-md5: {md5}\n")
        body = "\n".join(f" {line}" for line in long.split("\n"))
        translated.append(f"Package: {name}\nDescription-md5: {md5}\nDescription-en: {synopsis}\n{body}\n")

    for section in SECTIONS:
        for i in range(sources_per_section):
            source = f"{section}-tool{i}"
            synopsis = f"{TOPIC[section]} number {i}"
            long = f"This package provides a {TOPIC[section]}.\n .\nIt is variant {i} of the {section} family, with more words."
            add(source, source, section, synopsis, long)
            if i % 3 == 0:
                add(f"{source}-data", source, section, f"{TOPIC[section]} (data files)", long + "\n .\nThis package holds the data files.")
    add("old-thing", "old-thing", "games", "transitional package for new-thing", "This is a dummy transitional package.")
    add("libfoo1", "foo", "libs", "shared library for foo", "The foo library.")
    open_ = gzip.open if gz else open
    with open_(folder / ("Packages.gz" if gz else "Packages"), "wt", encoding="utf-8") as handle:
        handle.write("\n".join(packages))
    if translations:
        with open_(folder / ("Translation-en.gz" if gz else "Translation-en"), "wt", encoding="utf-8") as handle:
            handle.write("\n".join(translated))
    return folder


def write_text_folder(root: Path, classes: dict[str, list[str]]) -> Path:
    """`root/<class>/<i>.txt`, one text per file."""
    for name, texts in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts):
            (root / name / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    return root
