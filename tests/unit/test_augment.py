"""Batched on-device augmentation (kdcli.augment, engine.DeviceData) equals the per-sample reference.

The reference is torchvision's own per-image transform, RandomCrop(size, padding=p) followed by
RandomHorizontalFlip, written with transforms.v2.functional (pad, crop, hflip) so the random draws
(top, left, flip) can be shared: each draw is turned into a view id (ViewSet.encode) and the batch
is augmented in one call. uint8 images must match exactly.
"""

from __future__ import annotations

import pytest
import torch

from kdcli.augment import ViewSet, resolve_augment
from kdcli.data import DataSet, split_pool
from kdcli.data.vision import import_torchvision
from kdcli.engine import DeviceData, Prepare
from kdcli.errors import UsageError

import_torchvision()  # survives a torchvision build whose compiled ops do not match torch
from torchvision.transforms.v2 import functional as F  # noqa: E402


def reference(image: torch.Tensor, top: int, left: int, flip: bool, padding: int) -> torch.Tensor:
    """torchvision RandomCrop(H, padding) at (top, left), then RandomHorizontalFlip if `flip`: (C, H, W)."""
    height, width = image.shape[-2:]
    out = F.crop(F.pad(image, [padding]), top, left, height, width)
    return F.hflip(out) if flip else out


def draws(n: int, padding: int, flip: bool, generator: torch.Generator):
    """torchvision-style random draws: top, left uniform in [0, 2p]; flip with probability 1/2."""
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return top, left, flips


def to_views(views: ViewSet, top, left, flips) -> torch.Tensor:
    p = views.shift
    dx = torch.where(flips, left - p, p - left)
    return views.encode(flips, p - top, dx)


@pytest.mark.parametrize("padding,flip,shape", [(4, True, (3, 32, 32)), (2, True, (3, 9, 13)),
                                                (1, False, (1, 8, 8)), (0, True, (3, 5, 7)),
                                                (3, False, (2, 6, 6))])
def test_batched_views_equal_torchvision_per_sample(padding, flip, shape):
    generator = torch.Generator().manual_seed(padding * 10 + flip)
    images = torch.randint(0, 256, (64, *shape), dtype=torch.uint8, generator=generator)
    views = ViewSet(flip=flip, shift=padding)
    top, left, flips = draws(len(images), padding, flip, generator)
    expected = torch.stack([reference(img, int(t), int(l_), bool(f), padding)
                            for img, t, l_, f in zip(images, top, left, flips)])
    got = views.apply(images, to_views(views, top, left, flips))
    assert got.dtype == torch.uint8
    assert torch.equal(got, expected)


def test_every_view_is_a_torchvision_crop_and_flip():
    """All 2 x 5 x 5 views of translate:2,flip, one per sample, against the reference."""
    views = ViewSet.parse("flip,translate:2")
    assert views.count == 50
    images = torch.randint(0, 256, (views.count, 3, 6, 7), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    ids = torch.arange(views.count)
    flips, dy, dx = views.decode(ids)
    assert torch.equal(views.encode(flips, dy, dx), ids)
    got = views.apply(images, ids)
    for b in range(views.count):
        top = 2 - int(dy[b])
        left = 2 + int(dx[b]) if flips[b] else 2 - int(dx[b])
        assert torch.equal(got[b], reference(images[b], top, left, bool(flips[b]), 2)), b
    assert torch.equal(got[views.identity], images[views.identity])


def test_views_on_float_batches_match_uint8():
    views = ViewSet(flip=True, shift=3)
    images = torch.randint(0, 256, (16, 3, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    ids = views.sample(16, torch.Generator().manual_seed(3))
    assert torch.equal(views.apply(images.float(), ids), views.apply(images, ids).float())


def _image_data(n: int = 40) -> DataSet:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    train_idx, val_idx = split_pool(n, 0.25, 0)
    return DataSet("synthetic", "classification", x, y, train_idx, val_idx, x[:5], y[:5], 10, scale=1 / 255,
                   mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), default_augment=("crop:2", "flip"))


def test_device_batch_equals_per_sample_pipeline():
    """DeviceData.batch (gather + augment + normalize on the device) = per sample crop, flip, ToTensor-style
    scaling and Normalize, on the same draws; Prepare is bitwise DataSet.prepare."""
    data = _image_data()
    dd = DeviceData(data, torch.device("cpu"))
    views = resolve_augment("auto", data.default_augment, data.is_image)
    assert views == ViewSet(flip=True, shift=2)
    generator = torch.Generator().manual_seed(5)
    idx = data.train_idx[:16]
    top, left, flips = draws(len(idx), 2, True, generator)
    view_ids = to_views(views, top, left, flips)
    batch = dd.batch(idx, views, view_ids)
    mean = torch.tensor(data.mean).view(-1, 1, 1)
    std = torch.tensor(data.std).view(-1, 1, 1)
    for row, (i, t, l_, f) in enumerate(zip(idx, top, left, flips)):
        image = reference(data.x_pool[i], int(t), int(l_), bool(f), 2)
        expected = (image.float() * data.scale - mean) / std
        assert torch.equal(batch.x[row], expected)
    assert torch.equal(batch.y, data.y_pool[idx]) and torch.equal(batch.views, view_ids)
    assert torch.equal(Prepare(data, torch.device("cpu"))(data.x_pool), data.prepare(data.x_pool))


def test_prepare_leaves_float_inputs_alone():
    x = torch.randn(6, 4)
    data = DataSet("features", "regression", x, torch.randn(6), torch.arange(4), torch.arange(4, 6),
                   x[:2], torch.randn(2), 1, mean=(0.1,) * 4, std=(2.0,) * 4)
    before = x.clone()
    out = Prepare(data, torch.device("cpu"))(x)
    assert torch.equal(out, data.prepare(x)) and torch.equal(x, before)


def test_parse_and_errors():
    assert ViewSet.parse("crop:4,flip") == ViewSet.parse("flip,translate:4") == ViewSet(True, 4)
    assert ViewSet.parse("none").count == 1 and ViewSet.parse("translate:1").count == 9
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    assert ViewSet().apply(images, torch.zeros(2, dtype=torch.long)) is images
    for bad in ("rotate", "crop:x", "translate:-1"):
        with pytest.raises(UsageError):
            ViewSet.parse(bad)
