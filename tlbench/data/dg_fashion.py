"""Multi-domain data sets for domain generalisation, built the way DomainBed builds RotatedMNIST and
ColoredMNIST (Gulrajani & Lopez-Paz, 2021), from Fashion-MNIST, which every install has offline.

`rotated_fashion:<angle>`, angle ∈ {0, 15, 30, 45, 60, 75}: the 70,000 Fashion-MNIST images are shuffled
once (seed 0) and dealt to the six domains in turn, so no two domains share an image; each domain's
images are rotated by its angle. Ten classes.

`colored_fashion:<e>`, e ∈ {0.1, 0.2, 0.9} (DomainBed's +90 %, +80 %, −90 % environments): the binary
label is the class < 5 (tops and trousers… vs. sandals, shirts…), flipped with probability 0.25 (label
noise); a colour is drawn from the label, flipped with probability e, and the grey image is painted
into the red (colour 0) or green (colour 1) channel. In the first two domains colour predicts the
label better than the shape (90 % and 80 % vs 75 %); in the third the correlation reverses: the case
where empirical risk minimisation latches onto the spurious cue.

`rotated_mnist:<angle>` and `colored_mnist:<e>` are DomainBed's own RotatedMNIST and ColoredMNIST, built
the same way from MNIST when its files are present (`<data root>/mnist/`; the same one-line error as the
`mnist` domain otherwise).

Each domain is split 70/10/20 into train/val/test (stratified, split seed 0). `data.synthetic_size`
caps the images per domain (DomainBed uses all: 11,666 for RotatedMNIST, 23,333 for ColoredMNIST), so
tests and CPU studies stay small. The generators draw only from their own seeded random generators.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import ConfigError
from ..paths import data_root
from . import register_domain
from .base import DomainSplits, TensorImages, fingerprint_tensors, stratified_split
from .fashion import FASHION_CLASSES, fashion_arrays
from .torchvision_sets import DIGITS, mnist_arrays

ROTATIONS = (0, 15, 30, 45, 60, 75)
COLOR_FLIPS = (0.1, 0.2, 0.9)
#: DomainBed's label noise for ColoredMNIST.
LABEL_NOISE = 0.25
SPLIT = (0.7, 0.1, 0.2)


#: Base data set → (its arrays' reader, class names, the two halves the coloured label splits it into).
BASES = {
    "fashion": (fashion_arrays, list(FASHION_CLASSES), ["tops (classes 0-4)", "others (classes 5-9)"]),
    "mnist": (mnist_arrays, list(DIGITS), ["digits 0-4", "digits 5-9"]),
}


def _all_images(base: str, cfg) -> tuple[np.ndarray, np.ndarray]:
    return _all_images_in(base, str(data_root(cfg.root)))


@functools.lru_cache(maxsize=2)
def _all_images_in(base: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 images and labels, read once per process: a leave-one-domain-out run builds six domains
    from them (decompressing the files took 0.5 s each time)."""
    train_x, train_y, test_x, test_y = BASES[base][0](SimpleNamespace(root=root))
    images, labels = np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y]).astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False  # shared by every domain built from them
    return images, labels


def _dealt(images: np.ndarray, labels: np.ndarray, index: int, domains: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """The images of domain `index` of `domains`: a fixed shuffle dealt in turn, at most `cap` of them."""
    order = np.random.default_rng(0).permutation(len(images))[index::domains][:cap]
    return images[order], labels[order]


def _splits(name: str, images: torch.Tensor, labels: torch.Tensor, class_names: list[str], hflip_ok: bool) -> DomainSplits:
    whole = TensorImages(images, labels)
    train, val, test = stratified_split(labels.numpy(), SPLIT, seed=0)
    return DomainSplits(
        name, whole.subset(train), whole.subset(val), whole.subset(test), class_names, fingerprint=fingerprint_tensors(images, labels), hflip_ok=hflip_ok
    )


def rotate(images: np.ndarray, degrees: float) -> torch.Tensor:
    """N×H×W uint8 images rotated counter-clockwise by `degrees` about their centre (bilinear, zeros
    outside), as N×1×H×W uint8."""
    from torchvision.transforms.functional import InterpolationMode
    from torchvision.transforms.functional import rotate as rotate_tensor

    batch = torch.from_numpy(images).unsqueeze(1)
    if degrees == 0:
        return batch.contiguous()
    return rotate_tensor(batch, float(degrees), interpolation=InterpolationMode.BILINEAR)


def _argument(family: str, argument: str, allowed: tuple) -> float:
    try:
        value = float(argument)
    except ValueError:
        value = None
    if value not in [float(a) for a in allowed]:
        raise ConfigError(f"data: '{family}:{argument}' is not a domain of {family}; domains: {', '.join(f'{family}:{a:g}' for a in allowed)}")
    return value


def rotated_domain(base: str, argument: str, cfg) -> DomainSplits:
    family = f"rotated_{base}"
    degrees = _argument(family, argument, ROTATIONS)
    images, labels = _dealt(*_all_images(base, cfg), ROTATIONS.index(int(degrees)), len(ROTATIONS), cfg.synthetic_size)
    return _splits(f"{family}:{degrees:g}", rotate(images, degrees), torch.from_numpy(labels), BASES[base][1], hflip_ok=False)


def colored(images: np.ndarray, classes: np.ndarray, flip: float, generator: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """DomainBed's ColoredMNIST rule on grey images: (N×3×H×W uint8 images, binary labels)."""
    labels = (classes >= 5).astype(np.int64)
    labels ^= generator.random(len(labels)) < LABEL_NOISE
    colours = labels ^ (generator.random(len(labels)) < flip)
    out = np.zeros((len(images), 3, *images.shape[1:]), dtype=np.uint8)
    out[np.arange(len(images)), colours] = images  # channel 0 red, channel 1 green
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64))


def colored_domain(base: str, argument: str, cfg) -> DomainSplits:
    family = f"colored_{base}"
    flip = _argument(family, argument, COLOR_FLIPS)
    index = COLOR_FLIPS.index(flip)
    images, classes = _dealt(*_all_images(base, cfg), index, len(COLOR_FLIPS), cfg.synthetic_size)
    coloured, labels = colored(images, classes, flip, np.random.default_rng(1000 + index))
    return _splits(f"{family}:{flip:g}", coloured, labels, BASES[base][2], hflip_ok=base == "fashion")


def _register_families() -> None:
    """`rotated_<base>` and `colored_<base>` for every base data set (DomainBed's two constructions)."""
    for base in BASES:
        register_domain(f"rotated_{base}")(functools.partial(_built_by, rotated_domain, base))
        register_domain(f"colored_{base}")(functools.partial(_built_by, colored_domain, base))


def _built_by(construction, base: str, argument: str, cfg, seed: int) -> DomainSplits:
    return construction(base, argument, cfg)


_register_families()
