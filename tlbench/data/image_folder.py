"""Image-folder domains: the standard transfer / domain-adaptation benchmarks as the user has them on disk.

Layout: `<data_root>/<dataset>/<domain>/<class>/<image>` (data_root is `data.root`, else $TLBENCH_DATA).
Families: office31 (amazon, dslr, webcam — the official archive's extra `images/` level is accepted),
office_home (Art, Clipart, Product, Real_World), pacs (art_painting, cartoon, photo, sketch),
domainnet (clipart, infograph, painting, quickdraw, real, sketch), visda2017 (train = synthetic,
validation = real), and `folder:/path/to/domain` for any folder in the same layout.

Everything that can be wrong with a folder is checked before training, each as a one-line DataError:
missing folder, empty class, undecodable image (header check, cached in a manifest keyed by the folders'
mtimes so it runs once). Class names are the sorted class-folder names, so domains are comparable.
Each domain is split train/val/test = 0.8/0.1/0.1 per class with split seed 0 (the same for every run
seed); for a DA target, its train split is used without labels. Images stream from disk (with workers)
as uint8 C×H×W tensors: shorter side resized to `data.image_size`, then centre-cropped square.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..atomic_files import atomic_write
from ..errors import ConfigError, DataError
from ..paths import cache_dir, data_root
from . import register_domain
from .base import DomainSplits, stratified_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
FOLDER_SPLIT = (0.8, 0.1, 0.1)
MANIFEST_VERSION = "1"
ROOT_HINT = "set data.root=<folder> or $TLBENCH_DATA"


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """One image file → uint8 3×size×size (RGB; shorter side resized to `size`, centre crop)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when much larger
            image = image.convert("RGB")
            scale = size / min(image.size)
            width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((width, height), Image.BILINEAR, reducing_gap=3.0)
            left, top = (width - size) // 2, (height - size) // 2
            image = image.crop((left, top, left + size, top + size))
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class ImageFiles(Dataset):
    """Images streamed from files: `(uint8 3×size×size, label)`, with `.labels` for budgets and splits."""

    def __init__(self, paths: list[str], labels, size: int):
        self.paths = [str(p) for p in paths]
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.size = size
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return load_image(self.paths[index], self.size), self.labels[index]

    def subset(self, indices) -> "ImageFiles":
        indices = np.asarray(indices, dtype=np.int64)
        return ImageFiles([self.paths[i] for i in indices], self.labels.numpy()[indices], self.size)


def fingerprint_files(folder: Path, names: list[str], labels) -> str:
    """Content-free but change-sensitive hash of a file dataset: relative names, labels and byte sizes."""
    digest = hashlib.sha256()
    for name, cls in zip(names, labels):
        digest.update(f"{name}|{int(cls)}|{(Path(folder) / name).stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def check_splits(splits: DomainSplits, fractions: tuple[float, ...]) -> DomainSplits:
    """A split left empty by per-class rounding would only fail later, inside the training loop."""
    for part in ("train", "val", "test"):
        if len(getattr(splits, part)) == 0:
            raise DataError(
                f"{splits.name}: the {part} split is empty: too few images per class to split them "
                f"{'/'.join(f'{f:g}' for f in fractions)}; add images (about 10 per class or more)"
            )
    return splits


def file_splits(name: str, files: ImageFiles, class_names: list[str], fingerprint: str, fractions=FOLDER_SPLIT, hflip_ok: bool = True) -> DomainSplits:
    """Stratified train/val/test of a file dataset, split seed fixed at 0 so every run sees the same test set."""
    train, val, test = (files.subset(idx) for idx in stratified_split(files.labels.numpy(), fractions, seed=0))
    return check_splits(DomainSplits(name, train, val, test, class_names, fingerprint=fingerprint, hflip_ok=hflip_ok), fractions)


# ------------------------------------------------------------------ scanning and checking a domain folder


@dataclass
class Manifest:
    class_names: list[str]
    files: list[str]  # relative to the domain folder
    labels: list[int]
    fingerprint: str


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _check_header(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.verify()
        return None
    except Exception as exc:  # PIL raises many types for damaged files
        return f"{type(exc).__name__}: {exc}"


def _manifest_key(folder: Path, classes: list[Path]) -> str:
    digest = hashlib.sha256(f"{MANIFEST_VERSION}|{folder.resolve()}|{folder.stat().st_mtime_ns}".encode())
    for path in classes:
        digest.update(f"|{path.name}:{path.stat().st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def scan_folder(folder: Path, label: str) -> Manifest:
    """List and check `folder/<class>/<image>` once; later calls read the cached manifest until a class
    folder's contents change (adding, removing or renaming files changes the folders' mtimes)."""
    classes = _class_folders(folder)
    if not classes:
        raise DataError(f"{label}: no class folders in {folder}; expected {folder}/<class>/<image>")
    if len(classes) < 2:
        raise DataError(f"{label}: one class folder ({classes[0].name}) in {folder}; classification needs at least two")
    cached = cache_dir("manifests") / f"{_manifest_key(folder, classes)}.json"
    if cached.exists():
        try:
            return Manifest(**json.loads(cached.read_text()))
        except (ValueError, TypeError):
            cached.unlink(missing_ok=True)
    files: list[str] = []
    labels: list[int] = []
    for index, class_dir in enumerate(classes):
        members = sorted(str(Path(dirpath, name).relative_to(folder)) for dirpath, _, names in os.walk(class_dir) for name in names if _is_image(name))
        if not members:
            raise DataError(f"{label}: class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS[:4])}, …)")
        files += members
        labels += [index] * len(members)
    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = [(f, err) for f, err in zip(files, pool.map(lambda f: _check_header(folder / f), files)) if err]
    if problems:
        shown = "; ".join(f"{folder / f} ({err})" for f, err in problems[:3])
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise DataError(f"{label}: {len(problems)} unreadable image(s): {shown}{more}; remove or replace them")
    manifest = Manifest([c.name for c in classes], files, labels, fingerprint_files(folder, files, labels))
    atomic_write(cached, lambda handle: handle.write(json.dumps(manifest.__dict__).encode()))
    return manifest


def folder_domain(name: str, folder: Path, cfg, hflip_ok: bool = True) -> DomainSplits:
    manifest = scan_folder(folder, name)
    files = ImageFiles([folder / f for f in manifest.files], manifest.labels, cfg.image_size)
    return file_splits(name, files, manifest.class_names, manifest.fingerprint, hflip_ok=hflip_ok)


# ------------------------------------------------------------------ named benchmark families


@dataclass(frozen=True)
class FolderFamily:
    #: Folder names tried under data_root, in order (the first that exists is used).
    folders: tuple[str, ...]
    domains: tuple[str, ...]
    #: Short or alternative domain names → canonical name.
    aliases: dict[str, str] = field(default_factory=dict)


FAMILIES = {
    "office31": FolderFamily(("office31", "Office31", "office-31", "OFFICE31"), ("amazon", "dslr", "webcam"), {"a": "amazon", "d": "dslr", "w": "webcam"}),
    "office_home": FolderFamily(
        ("office_home", "OfficeHome", "office-home", "OfficeHomeDataset_10072016"),
        ("Art", "Clipart", "Product", "Real_World"),
        {"a": "Art", "c": "Clipart", "p": "Product", "r": "Real_World", "real world": "Real_World"},
    ),
    "pacs": FolderFamily(
        ("pacs", "PACS", "pacs/kfold", "PACS/kfold"),
        ("art_painting", "cartoon", "photo", "sketch"),
        {"a": "art_painting", "c": "cartoon", "p": "photo", "s": "sketch"},
    ),
    "vlcs": FolderFamily(("VLCS", "vlcs"), ("Caltech101", "LabelMe", "SUN09", "VOC2007"), {"c": "Caltech101", "l": "LabelMe", "s": "SUN09", "v": "VOC2007"}),
    "terra_incognita": FolderFamily(
        ("terra_incognita", "TerraIncognita", "terra-incognita"),
        ("location_38", "location_43", "location_46", "location_100"),
        {"l38": "location_38", "l43": "location_43", "l46": "location_46", "l100": "location_100"},
    ),
    "domainnet": FolderFamily(
        ("domainnet", "DomainNet"),
        ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
        {"c": "clipart", "i": "infograph", "p": "painting", "q": "quickdraw", "r": "real", "s": "sketch"},
    ),
    "visda2017": FolderFamily(("visda2017", "visda-2017", "VisDA2017", "visda"), ("train", "validation"), {"synthetic": "train", "real": "validation"}),
}


def _canonical_domain(family: str, spec: FolderFamily, argument: str) -> str:
    lowered = {d.lower(): d for d in spec.domains}
    domain = spec.aliases.get(argument.lower()) or lowered.get(argument.lower())
    if domain is None:
        raise ConfigError(f"data: '{family}:{argument}' is not a domain of {family}; choose one of: {', '.join(spec.domains)}")
    return domain


def _find_child(parent: Path, name: str) -> Path | None:
    """`name` in `parent`, also matched case-insensitively and with '_' / ' ' interchanged."""
    if (parent / name).is_dir():
        return parent / name
    wanted = {name.lower(), name.lower().replace("_", " "), name.lower().replace(" ", "_")}
    for child in sorted(parent.iterdir()):
        if child.is_dir() and child.name.lower() in wanted:
            return child
    return None


def _without_images_level(folder: Path) -> Path:
    """The official Office-31 archive has `<domain>/images/<class>`; accept that extra level."""
    children = _class_folders(folder)
    if len(children) == 1 and children[0].name == "images":
        return children[0]
    return folder


def locate_domain(family: str, argument: str, cfg) -> tuple[str, Path]:
    spec = FAMILIES[family]
    if not argument:
        raise ConfigError(f"data: '{family}' needs a domain, e.g. '{family}:{spec.domains[0]}'; domains: {', '.join(spec.domains)}")
    domain = _canonical_domain(family, spec, argument)
    root = data_root(cfg.root)
    bases = [root / f for f in spec.folders if (root / f).is_dir()]
    if not bases:
        raise DataError(
            f"{family}: dataset folder not found: looked for {root / spec.folders[0]} "
            f"(or {', '.join(spec.folders[1:])}) laid out as <domain>/<class>/<image>; {ROOT_HINT} to the folder containing it"
        )
    for base in bases:
        found = _find_child(base, domain)
        if found is not None:
            return domain, _without_images_level(found)
    present = sorted(p.name for p in _class_folders(bases[0]))
    raise DataError(f"{family}: domain folder '{domain}' not found in {bases[0]} (found: {', '.join(present) or 'nothing'}); {ROOT_HINT}")


def _register_family(family: str) -> None:
    @register_domain(family)
    def build(argument: str, cfg, seed: int) -> DomainSplits:
        domain, folder = locate_domain(family, argument, cfg)
        return folder_domain(f"{family}:{domain}", folder, cfg)

    build.__doc__ = f"{family} domain from <data_root>/{FAMILIES[family].folders[0]}/<domain>/<class>/<image>."


for _family in FAMILIES:
    _register_family(_family)


@register_domain("folder")
def custom_folder(argument: str, cfg, seed: int) -> DomainSplits:
    """Any folder `<domain>/<class>/<image>`: `folder:/abs/path/to/domain` (relative paths are taken under
    data_root). Horizontal flips are assumed label-preserving, as for natural photos."""
    if not argument:
        raise ConfigError("data: 'folder' needs a path, e.g. 'folder:/data/my_dataset/domain_a'")
    folder = Path(argument).expanduser()
    if not folder.is_absolute():
        folder = data_root(cfg.root) / folder
    if not folder.is_dir():
        raise DataError(f"folder: {folder} is not a folder; give 'folder:/abs/path/to/domain' (relative paths are under data.root / $TLBENCH_DATA)")
    return folder_domain(f"folder:{folder.name}", folder, cfg)
