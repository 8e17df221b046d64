"""The baseline CNN is the original project's network, and it can learn."""
import torch
import torch.nn as nn

import fer
import train_baseline
from conftest import training_config


def test_baseline_maps_48x48_faces_to_7_logits_with_the_original_parameter_count():
    model = fer.BaselineCNN()
    assert model(torch.rand(5, 1, 48, 48)).shape == (5, 7)
    # conv 1->32, 32->64, 64->128 (3x3, bias), FC 128*6*6 -> 512 -> 7
    expected = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 128 + 128) + (4608 * 512 + 512) + (512 * 7 + 7)
    assert fer.count_parameters(model) == expected == 2_456_071
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules()) == 2


def test_width_sets_the_channels_of_every_conv():
    model = fer.build_model({"arch": "baseline", "width": 16})
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [16, 32, 64]
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


def test_vggnet_maps_48x48_faces_to_7_logits_with_its_parameter_count():
    model = fer.VGGNet()
    assert model(torch.rand(3, 1, 48, 48)).shape == (3, 7)
    # 3x3 convs (no bias) + BatchNorm (weight and bias): one in the first stage, two in the others,
    # widths 32..256, then FC 256 -> 7
    convs, channels = 0, 1
    for width, stage_convs in ((32, 1), (64, 2), (128, 2), (256, 2)):
        for _ in range(stage_convs):
            convs += 9 * channels * width + 2 * width
            channels = width
    assert fer.count_parameters(model) == convs + 256 * 7 + 7 == 1_165_159
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [32, 64, 64, 128, 128, 256, 256]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4  # 48 -> 3
    assert fer.build_model({"arch": "vggnet", "width": 8})(torch.rand(1, 1, 48, 48)).shape == (1, 7)


def test_vggnet_class_defaults_are_the_network_its_recipe_trains_and_the_release_holds():
    recipe = vars(train_baseline.parse_args(["--arch", "vggnet"]))
    trained, default = fer.build_model(recipe), fer.VGGNet()
    assert str(trained) == str(default)  # the same layers, in the same order, of the same sizes
    released = torch.load(fer.RELEASED_RUN / "best.pt", weights_only=True)
    default.load_state_dict(released["model"])  # strict: every tensor of the released model has its place


def test_vggnet_pools_before_batchnorm_and_so_computes_what_pooling_last_would():
    # Max-pooling commutes with ReLU and with an eval-mode BatchNorm of positive scale: moving each
    # max-pool after the ReLU that follows it gives the same maps, on four times the pixels.
    torch.manual_seed(0)
    model = fer.VGGNet(width=8).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # statistics and positive scales that are not the defaults
            module.running_mean.uniform_(-1, 1), module.running_var.uniform_(0.5, 2)
            module.weight.data.copy_(torch.linspace(0.5, 2, module.num_features))
    pool_last, pool = [], None
    for layer in model.features:
        if isinstance(layer, nn.MaxPool2d):
            pool = layer
            continue
        pool_last.append(layer)
        if isinstance(layer, nn.ReLU) and pool is not None:
            pool_last.append(pool)
            pool = None
    faces = torch.rand(4, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model.features(faces), nn.Sequential(*pool_last)(faces))
    assert isinstance(model.features[1], nn.MaxPool2d)  # conv -> pool -> BatchNorm -> ReLU


def test_jitter_scales_contrast_and_brightness_within_the_strength_and_keeps_the_range():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(256, 1, 48, 48, generator=generator) * 0.5 + 0.25  # room to brighten without clipping
    jittered = fer.jitter_brightness_contrast(images, strength=0.2, generator=generator)
    assert jittered.shape == images.shape and 0 <= jittered.min() and jittered.max() <= 1
    brightness = jittered.mean((1, 2, 3)) / images.mean((1, 2, 3))
    contrast = jittered.std((1, 2, 3)) / images.std((1, 2, 3)) / brightness
    assert brightness.min() >= 0.8 - 1e-5 and brightness.max() <= 1.2 + 1e-5
    assert brightness.max() - brightness.min() > 0.3  # the factors spread over the range
    assert contrast.min() >= 0.8 - 1e-4 and contrast.max() <= 1.2 + 1e-4
    assert contrast.max() - contrast.min() > 0.3
    assert torch.allclose(fer.jitter_brightness_contrast(images, strength=0.0), images)


def test_ema_follows_the_weights_with_the_given_decay():
    model, ema = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0), ema.weight.fill_(0.0)
    fer.update_ema(ema, model, decay=0.9, step=10_000)  # late in training: the full decay
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.1))
    fer.update_ema(ema, model, decay=0.9, step=0)  # step 0: decay (1 + 0) / (10 + 0) = 0.1
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.1 * 0.1 + 0.9))


def test_training_with_ema_and_jitter_selects_the_averaged_weights(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 48, 48), dtype=torch.uint8, generator=generator)
    data = {split: {"images": images, "labels": torch.arange(32) % 7} for split in ("train", "val")}
    config = training_config(arch="vggnet", width=4, epochs=2, ema=0.9, jitter=0.2)
    progress = fer.train(fer.build_model(config), data, config, tmp_path)
    assert all("val_acc_raw" in row for row in progress["history"])
    best, last = (torch.load(tmp_path / name, weights_only=True) for name in ("best.pt", "last.pt"))
    assert set(last["ema"]) == set(last["model"])
    if best["epoch"] == 2:  # best.pt holds the average, not the raw weights
        assert all(torch.equal(best["model"][key], last["ema"][key]) for key in last["ema"])
