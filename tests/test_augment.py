"""Batch augmentation presets: shape, dtype and range preserved, `none` is a pure conversion, flips only
where the domain allows them, and repeatable under torch.manual_seed."""

from __future__ import annotations

import pytest
import torch

from tlbench.data.augment import PRESETS, build_augmentation
from tlbench.errors import ConfigError

SHAPES = [(6, 1, 8, 8), (6, 1, 28, 28), (6, 3, 32, 32), (4, 3, 96, 96)]


def random_batch(shape, dtype):
    torch.manual_seed(123)
    batch = torch.randint(0, 256, shape, dtype=torch.uint8)
    return batch if dtype == torch.uint8 else batch.float() / 255


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_dtype_range_and_device(preset, shape, dtype):
    batch = random_batch(shape, dtype)
    out = build_augmentation(preset, hflip_ok=True)(batch)
    assert out.shape == batch.shape and out.dtype == torch.float32 and out.device == batch.device
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


def test_none_is_identity_up_to_scaling():
    batch = random_batch((5, 3, 16, 16), torch.uint8)
    assert torch.equal(build_augmentation("none", True)(batch), batch.float() / 255)
    floats = batch.float() / 255
    assert torch.equal(build_augmentation("none", True)(floats), floats)


@pytest.mark.parametrize("preset", ["standard", "strong"])
def test_presets_change_images(preset):
    batch = random_batch((8, 3, 32, 32), torch.uint8)
    torch.manual_seed(0)
    assert not torch.allclose(build_augmentation(preset, False)(batch), batch.float() / 255)


def horizontal_ramp(n: int, channels: int, side: int) -> torch.Tensor:
    """Brightness increasing left → right: any mirrored sample has its gradient reversed."""
    ramp = torch.linspace(0.1, 0.9, side)
    return ramp.view(1, 1, 1, side).expand(n, channels, side, side).contiguous()


def gradient_direction(images: torch.Tensor) -> torch.Tensor:
    """Per sample: sign of the median horizontal difference between neighbouring content pixels
    (pairs touching zero fill or cutout are ignored)."""
    left, right = images[..., :-1], images[..., 1:]
    valid = (left > 0.02) & (right > 0.02) & ((left - 0.5).abs() > 1e-6) & ((right - 0.5).abs() > 1e-6)
    diffs = (right - left).masked_fill(~valid, float("nan")).flatten(1)
    return torch.sign(torch.nanmedian(diffs, dim=1).values)


@pytest.mark.parametrize("preset", ["standard", "strong"])
@pytest.mark.parametrize("side", [28, 96])
def test_no_flips_without_hflip_ok(preset, side):
    batch = horizontal_ramp(64, 1, side)
    torch.manual_seed(0)
    assert (gradient_direction(build_augmentation(preset, hflip_ok=False)(batch)) > 0).all()
    torch.manual_seed(0)
    flipped = gradient_direction(build_augmentation(preset, hflip_ok=True)(batch)) < 0
    assert 10 < int(flipped.sum()) < 54  # about half are mirrored when allowed


def test_random_resized_crop_keeps_ramp_monotone_without_flips():
    out = build_augmentation("standard", hflip_ok=False)(horizontal_ramp(32, 3, 96))
    assert (out[..., 1:] - out[..., :-1] >= -1e-5).all()


@pytest.mark.parametrize("preset", ["standard", "strong"])
def test_same_seed_same_output_per_sample_randomness(preset):
    batch = random_batch((16, 3, 32, 32), torch.uint8)
    augment = build_augmentation(preset, hflip_ok=True)
    torch.manual_seed(7)
    first = augment(batch)
    torch.manual_seed(7)
    assert torch.equal(first, augment(batch))
    torch.manual_seed(8)
    assert not torch.equal(first, augment(batch))
    same = batch[:1].expand(16, -1, -1, -1)  # identical inputs get different draws within one batch
    torch.manual_seed(7)
    out = augment(same)
    assert len({tuple(o.flatten()[:64].tolist()) for o in out}) > 8


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="choose one of: none, standard, strong"):
        build_augmentation("heavy", True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_runs_on_the_batch_device():
    batch = random_batch((4, 3, 32, 32), torch.uint8).cuda()
    assert build_augmentation("strong", True)(batch).device == batch.device
