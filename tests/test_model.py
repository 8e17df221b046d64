"""The baseline CNN is the seed's network, and it can learn."""
import torch
import torch.nn as nn

import fer
from conftest import training_config


def test_baseline_maps_48x48_faces_to_7_logits_with_the_seed_parameter_count():
    model = fer.BaselineCNN()
    assert model(torch.rand(5, 1, 48, 48)).shape == (5, 7)
    # conv 1->32, 32->64, 64->128 (3x3, bias), FC 128*6*6 -> 512 -> 7
    expected = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 128 + 128) + (4608 * 512 + 512) + (512 * 7 + 7)
    assert fer.count_parameters(model) == expected == 2_456_071
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules()) == 2


def test_batch_norm_and_width_are_explicit_variants():
    model = fer.build_model({"arch": "baseline", "width": 16, "batch_norm": True})
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    assert model.features[0].out_channels == 16
    assert model(torch.rand(2, 1, 48, 48)).shape == (2, 7)


def test_a_tiny_model_overfits_32_images(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 48, 48), dtype=torch.uint8, generator=generator)
    labels = torch.arange(32) % 7
    data = {split: {"images": images, "labels": labels} for split in ("train", "val")}
    config = training_config(epochs=60, batch_size=32, lr=2e-3, flip=False, rotate=0, zoom=0, translate=0)
    torch.manual_seed(0)
    progress = fer.train(fer.build_model(config), data, config, tmp_path)
    assert progress["best_val_acc"] == 1.0
