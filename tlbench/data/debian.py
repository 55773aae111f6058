"""Debian's package index as a real, offline text-classification task with a natural domain shift.

Every Debian or Ubuntu machine with apt has the index of its archive (`Packages`: one stanza per binary
package, with its `Section` and one-line synopsis); Debian's `Translation-en` index adds each package's
long description. The task: predict a package's Section from its text, over the topical Sections that
hold at least 300 packages of bookworm main (SECTIONS: admin, editors, games, graphics, mail, math, net,
science, sound, text, web). The other Sections of that size are left out: packaging roles (libs,
libdevel, doc, metapackages) and language ecosystems (python, perl, haskell, rust, golang, javascript,
java, ruby, gnu-r, php, ocaml, lisp, interpreters), whose synopses mostly say the label outright
("Python 3 module for ...", "development files for ..."), as do fonts and localization; desktop
environments (x11, gnome), which cut across topics; and the catch-alls utils, misc and devel.

Domains (`debian:<kind>`, optionally `debian:<kind>:<N>` for a stratified subsample of N texts):
- `debian:synopsis`: the one-line synopsis ("Real-time strategy game of ancient warfare"), ~6 words.
- `debian:description`: the long description (paragraphs, median ~50 words), synopsis line removed.

Source packages are divided between the two domains by a fixed hash of their name, so no package (and
no near-duplicate sibling of the same source) appears in both: `debian:synopsis → debian:description`
is a shift from terse titles to prose about different packages, with the same label set. Within a
domain, train/val/test = 0.6/0.2/0.2 by source package (again fixed by name, the same on every
machine and for every run seed). Transitional dummy packages are dropped.

Files are looked up in `<data root>/debian/`, then `<tlbench cache>/debian-lists/` (where
scripts/install.sh fetches them with long descriptions), then `/var/lib/apt/lists/`; the index is
parsed once per file set and kept as JSON in the tlbench cache.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..atomic_files import atomic_write
from ..errors import ConfigError, DataError
from ..paths import cache_dir, data_root
from . import register_domain
from .base import DomainSplits
from .text import grouped_split, stable_unit, texts_domain

SECTIONS = ["admin", "editors", "games", "graphics", "mail", "math", "net", "science", "sound", "text", "web"]
KINDS = ("synopsis", "description")
DEBIAN_SPLIT = (0.6, 0.2, 0.2)
SYSTEM_LISTS = Path("/var/lib/apt/lists")
PARSE_VERSION = "1"
#: Seconds apt's decompressor may take for one index (an 18 MB lz4 file takes well under one).
DECOMPRESS_TIMEOUT_S = 120
FETCH_HINT = (
    "on Debian/Ubuntu run scripts/install.sh as root (it fetches the index with long descriptions into the tlbench cache), "
    "or `apt-get update -o Acquire::Languages=en`, or copy Packages[.gz|.xz] and Translation-en[.gz|.xz] into <data root>/debian/"
)


def _index_files(folder: Path, marker: str) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_file() and marker in p.name and ".diff" not in p.name and not p.name.endswith((".gpg", "Release"))]
    return sorted(found, key=lambda p: (-p.stat().st_size, p.name))


def index_folders(cfg) -> list[Path]:
    return [data_root(cfg.root) / "debian", cache_dir("debian-lists"), SYSTEM_LISTS]


def locate(cfg, marker: str) -> Path | None:
    """The largest index file named like `marker` (the main archive's) in the first folder that has one."""
    for folder in index_folders(cfg):
        files = _index_files(folder, marker)
        if files:
            return files[0]
    return None


def read_index(path: Path) -> str:
    """An index file's text, whatever apt compressed it with (lz4 and zstd through apt's own helper)."""
    opener = {".gz": gzip.open, ".xz": lzma.open, ".lzma": lzma.open, ".bz2": bz2.open}.get(path.suffix)
    if opener is not None:
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    if path.suffix in (".lz4", ".zst"):
        helper = shutil.which("apt-helper") or "/usr/lib/apt/apt-helper"
        if not Path(helper).exists():
            raise DataError(f"debian: {path} is {path.suffix}-compressed and apt's apt-helper (which reads it) is not installed")
        try:
            done = subprocess.run([helper, "cat-file", str(path)], capture_output=True, timeout=DECOMPRESS_TIMEOUT_S, check=True)
        except subprocess.TimeoutExpired:
            raise DataError(f"debian: decompressing {path} took over {DECOMPRESS_TIMEOUT_S} s") from None
        except subprocess.CalledProcessError as exc:
            raise DataError(f"debian: apt-helper could not read {path}: {exc.stderr.decode(errors='replace').strip()[:200]}") from None
        return done.stdout.decode("utf-8", errors="replace")
    return path.read_text(encoding="utf-8", errors="replace")


def stanzas(text: str):
    """Deb822 stanzas as dicts; a continuation line (leading space) extends the previous field."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if not line:
                continue
            if line[0] in " \t" and key is not None:
                fields[key] += "\n" + line
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def long_text(description: str) -> str:
    """A Description-en value without its synopsis line, paragraphs joined (" ." lines are paragraph breaks)."""
    lines = description.split("\n")[1:]
    words = " ".join(line.strip() for line in lines if line.strip() != ".")
    return " ".join(words.split())


def parse(packages: Path, translations: Path | None) -> dict:
    """Records of the topical Sections: [package, source, section, synopsis, long description or ""]."""
    longs: dict[str, str] = {}
    if translations is not None:
        for stanza in stanzas(read_index(translations)):
            if "Description-md5" in stanza and "Description-en" in stanza:
                longs[stanza["Description-md5"]] = long_text(stanza["Description-en"])
    records = []
    wanted = set(SECTIONS)
    for stanza in stanzas(read_index(packages)):
        section = stanza.get("Section", "").rsplit("/", 1)[-1]  # "contrib/games", Ubuntu's "universe/games"
        synopsis = stanza.get("Description", "").split("\n", 1)[0].strip()
        if section not in wanted or not synopsis or "transitional" in synopsis.lower() or "dummy package" in synopsis.lower():
            continue
        name = stanza["Package"]
        source = stanza.get("Source", name).split()[0]
        long = stanza.get("Description", "").partition("\n")[2]
        records.append([name, source, section, synopsis, longs.get(stanza.get("Description-md5", ""), long_text("x\n" + long) if long else "")])
    records.sort()
    return {"packages": str(packages), "translations": str(translations) if translations else None, "records": records}


def _file_key(path: Path | None) -> str:
    if path is None:
        return "-"
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"


def load_index(cfg, need_long: bool) -> dict:
    """The parsed index (from the tlbench cache when the same files were parsed before)."""
    packages = locate(cfg, "Packages")
    if packages is None:
        folders = ", ".join(str(f) for f in index_folders(cfg))
        raise DataError(f"debian: no Debian package index (Packages) in {folders}; {FETCH_HINT}")
    translations = locate(cfg, "Translation-en")
    if need_long and translations is None and not _has_inline_long(packages):
        raise DataError(f"debian:description needs Debian's long descriptions (Translation-en), found only {packages}; {FETCH_HINT}")
    key = hashlib.sha256(f"{PARSE_VERSION}|{_file_key(packages)}|{_file_key(translations)}".encode()).hexdigest()[:20]
    path = cache_dir("text") / f"debian-index-{key}.json"
    if path.exists():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # torn or foreign: parse again
    parsed = parse(packages, translations)
    atomic_write(path, lambda handle: handle.write(json.dumps(parsed).encode("utf-8")))
    return parsed


def _has_inline_long(packages: Path) -> bool:
    """Old-style indexes (and hand-made ones) carry the long description inside Packages itself."""
    head = read_index(packages)[:200_000]
    return any("\n" in s.get("Description", "") for s in stanzas(head))


def subsample(labels: np.ndarray, size: int, salt: str) -> np.ndarray:
    """At most `size` indices, classes kept in proportion, fixed by the example order and `salt`."""
    if size >= len(labels):
        return np.arange(len(labels))
    keep = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        share = max(1, int(round(size * len(idx) / len(labels))))
        order = sorted(idx, key=lambda i: stable_unit(f"{salt}:{i}"))
        keep.extend(order[:share])
    return np.sort(np.asarray(keep, dtype=np.int64))


def parse_argument(argument: str) -> tuple[str, int | None]:
    kind, _, size = argument.partition(":")
    kind = kind or "synopsis"
    if kind not in KINDS:
        raise ConfigError(f"data: 'debian:{argument}' is not a domain; use debian:synopsis or debian:description (optionally :<max texts>)")
    if size and (not size.isdigit() or int(size) < len(SECTIONS) * 3):
        raise ConfigError(f"data: 'debian:{argument}': the size after the second ':' must be a whole number ≥ {len(SECTIONS) * 3}")
    return kind, int(size) if size else None


@register_domain("debian")
def debian(argument: str, cfg, seed: int) -> DomainSplits:
    kind, size = parse_argument(argument)
    index = load_index(cfg, need_long=kind == "description")
    half = 0 if kind == "synopsis" else 1
    chosen = [r for r in index["records"] if int(stable_unit(f"domain:{r[1]}") * 2) == half and (kind == "synopsis" or r[4])]
    if not chosen:
        raise DataError(f"debian:{kind}: no package of the Sections {', '.join(SECTIONS)} in {index['packages']}")
    labels = np.array([SECTIONS.index(r[2]) for r in chosen])
    if size is not None:
        keep = subsample(labels, size, f"{kind}:{size}")
        chosen, labels = [chosen[i] for i in keep], labels[keep]
    texts = [r[3] if kind == "synopsis" else r[4] for r in chosen]
    parts = grouped_split([r[1] for r in chosen], DEBIAN_SPLIT, salt="split")
    notes = {"packages_index": index["packages"], "translations_index": str(index["translations"])}
    return texts_domain(f"debian:{kind}" + (f":{size}" if size else ""), texts, labels, SECTIONS, parts, notes)
