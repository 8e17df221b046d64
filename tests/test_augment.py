"""Batched augmentation: invariants that hold for every random draw."""
import torch

import fer


def batch(count=8):
    return torch.rand(count, 1, 48, 48, generator=torch.Generator().manual_seed(0))


def test_augmentation_keeps_shape_dtype_and_range():
    images = batch()
    augmented = fer.augment_batch(images, generator=torch.Generator().manual_seed(1))
    assert augmented.shape == images.shape and augmented.dtype == images.dtype
    assert augmented.min() >= 0 and augmented.max() <= 1
    assert not torch.allclose(augmented, images)


def test_flipping_twice_with_the_same_seed_is_the_identity():
    images = batch()
    once = fer.augment_batch(images, rotate_degrees=0, zoom=0, translate=0, generator=torch.Generator().manual_seed(3))
    twice = fer.augment_batch(once, rotate_degrees=0, zoom=0, translate=0, generator=torch.Generator().manual_seed(3))
    flipped = [not torch.equal(a, b) for a, b in zip(once, images)]
    assert 0 < sum(flipped) < len(images)  # some images flipped, some not
    assert torch.equal(twice, images)


def test_all_augmentations_off_is_the_identity():
    images = batch()
    assert torch.equal(fer.augment_batch(images, flip=False, rotate_degrees=0, zoom=0, translate=0), images)


def test_augmentation_is_seeded():
    images = batch()
    first = fer.augment_batch(images, generator=torch.Generator().manual_seed(7))
    again = fer.augment_batch(images, generator=torch.Generator().manual_seed(7))
    other = fer.augment_batch(images, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_pure_translation_moves_the_image_content():
    images = torch.zeros(1, 1, 48, 48)
    images[..., 20:28, 20:28] = 1  # a square in the middle
    shifted = fer.augment_batch(images, flip=False, rotate_degrees=0, zoom=0, translate=0.1,
                                generator=torch.Generator().manual_seed(0))
    before = (images[0, 0].nonzero().float().mean(0))
    after = (shifted[0, 0] * torch.stack(torch.meshgrid(torch.arange(48.), torch.arange(48.), indexing="ij"))).sum((1, 2)) / shifted.sum()
    assert 0.5 < (after - before).abs().max() <= 4.8 + 0.5  # at most 10% of 48 pixels
