"""The baseline CNN is the original project's network, and it can learn."""
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
    model = fer.build_model({"arch": "vggnet", "width": 32, "dropout": 0.3})
    assert model(torch.rand(3, 1, 48, 48)).shape == (3, 7)
    # four stages of two 3x3 convs (no bias) + BatchNorm (weight and bias), widths 32..256, then FC 256 -> 7
    convs, channels = 0, 1
    for width in (32, 64, 128, 256):
        convs += 9 * channels * width + 2 * width + 9 * width * width + 2 * width
        channels = width
    assert fer.count_parameters(model) == convs + 256 * 7 + 7 == 1_174_439
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4  # 48 -> 3
    assert fer.build_model({"arch": "vggnet", "width": 8, "dropout": 0.3})(torch.rand(1, 1, 48, 48)).shape == (1, 7)


def test_vggnet_convs_sets_the_convs_of_each_stage():
    lite = fer.build_model({"arch": "vggnet", "width": 32, "dropout": 0.3, "convs": [1, 2, 2, 2]})
    assert lite(torch.rand(2, 1, 48, 48)).shape == (2, 7)
    assert [m.out_channels for m in lite.modules() if isinstance(m, nn.Conv2d)] == [32, 64, 64, 128, 128, 256, 256]
    # one conv fewer than VGGNet: the first stage's 32 -> 32 (3x3, no bias) and its BatchNorm
    assert fer.count_parameters(lite) == 1_174_439 - (9 * 32 * 32 + 2 * 32)


def test_vggnet_pool_first_computes_the_same_function():
    # Max-pooling commutes with ReLU and with an eval-mode BatchNorm of positive scale, so with the same
    # weights the two layer orders give the same logits; pool_first normalises a quarter of the pixels.
    torch.manual_seed(0)
    config = {"arch": "vggnet", "width": 8, "dropout": 0.3, "convs": [1, 2, 2, 2]}
    pool_last, pool_first = fer.build_model(config), fer.build_model(dict(config, pool_first=True))
    for module in pool_last.modules():
        if isinstance(module, nn.BatchNorm2d):  # statistics and positive scales that are not the defaults
            module.running_mean.uniform_(-1, 1), module.running_var.uniform_(0.5, 2)
            module.weight.data.copy_(torch.linspace(0.5, 2, module.num_features))
    # the same parameters in the same order; only the layers' positions (their names) differ
    pool_first.load_state_dict(dict(zip(pool_first.state_dict(), pool_last.state_dict().values())))
    faces = torch.rand(4, 1, 48, 48)
    torch.testing.assert_close(pool_first.eval()(faces), pool_last.eval()(faces))
    order = [type(m) for m in pool_first.features if isinstance(m, (nn.MaxPool2d, nn.BatchNorm2d))]
    assert order[:2] == [nn.MaxPool2d, nn.BatchNorm2d]


def test_vggnet_keeps_the_edges_of_a_40_pixel_crop():
    # 40 -> 20 -> 10 -> 5 -> 3: the last pooling keeps the fifth row and column, as a 48x48 face's
    # 6 -> 3 keeps all six; dropping them made a network trained on --crop 40 fail on whole faces.
    model = fer.build_model({"arch": "vggnet", "width": 8, "dropout": 0.3})
    assert model.features(torch.rand(1, 1, 40, 40)).shape[-2:] == (3, 3)
    assert model.features(torch.rand(1, 1, 48, 48)).shape[-2:] == (3, 3)


def test_random_erasing_fills_one_rectangle_per_chosen_image_with_the_mean_gray():
    images = torch.zeros(64, 1, 48, 48)
    erased = fer.erase_random_rectangles(images, probability=0.5, generator=torch.Generator().manual_seed(0))
    touched = (erased != 0).flatten(1).any(1)
    assert 16 < touched.sum() < 48  # about half of the images
    for image in erased[touched]:
        rows, columns = (image[0] != 0).nonzero().unbind(1)
        area = (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
        assert area == len(rows)  # one filled rectangle
        assert 0.01 * 48 * 48 <= area <= 0.3 * 48 * 48
        assert torch.all(image[0][rows, columns] == fer.FER_MEAN)
    assert torch.equal(fer.erase_random_rectangles(images, probability=0.0), images)


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


def test_training_with_ema_jitter_erasing_and_mixup_selects_the_averaged_weights(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 48, 48), dtype=torch.uint8, generator=generator)
    data = {split: {"images": images, "labels": torch.arange(32) % 7} for split in ("train", "val")}
    config = training_config(arch="vggnet", width=4, dropout=0.3, epochs=2, ema=0.9, erase=0.5, jitter=0.2, mixup=0.2)
    progress = fer.train(fer.build_model(config), data, config, tmp_path)
    assert all("val_acc_raw" in row for row in progress["history"])
    best, last = (torch.load(tmp_path / name, weights_only=True) for name in ("best.pt", "last.pt"))
    assert set(last["ema"]) == set(last["model"])
    if best["epoch"] == 2:  # best.pt holds the average, not the raw weights
        assert all(torch.equal(best["model"][key], last["ema"][key]) for key in last["ema"])
