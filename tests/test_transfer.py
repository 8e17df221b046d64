"""Transfer models with stand-in weights: ImageNet files cannot be downloaded here, so the tests
write torchvision-shaped state dicts themselves, into a temporary TORCH_HOME and into a file."""
import json

import pytest
import torch
import torch.nn as nn
import torchvision

import fer
import train_transfer
from conftest import training_config, run_script

ARCHS = ["resnet18", "vgg16", "mobilenet_v2"]


def transfer_config(arch="mobilenet_v2", **overrides):
    config = training_config(arch=arch, input_size=64, unfreeze="all", weights="none", weights_path=None,
                             feature_block=None, backbone_lr_scale=0.1, layer_decay=0.0, batch_size=4)
    config.update(overrides)
    return config


def stand_in_weights(arch, seed=0):
    """A full torchvision state dict (classifier included), as an ImageNet checkpoint has."""
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None).state_dict()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A TORCH_HOME holding stand-in 'ImageNet' files where torchvision keeps its downloads."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for arch in ARCHS:
        url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
        torch.save(stand_in_weights(arch), checkpoints / url.rsplit("/", 1)[1])
    return checkpoints


def test_layer_decay_gives_each_block_its_own_rate_from_the_top_down():
    config = transfer_config(unfreeze="2", layer_decay=0.5)
    model = fer.build_model(config)
    groups = fer.make_optimizer(model, config).param_groups
    assert [group["lr_scale"] for group in groups] == [1.0, 0.5, 0.25]  # the head, block 19, block 18
    blocks = model.blocks()
    assert groups[1]["params"] == list(blocks[-1][0].parameters())
    assert groups[2]["params"] == list(blocks[-2][0].parameters())
    assert groups[0]["params"] == list(model.head.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_imagenet_weights_come_from_torch_home_and_the_head_has_7_outputs(arch, torch_home):
    state = train_transfer.imagenet_weights(arch)
    model = fer.build_model(transfer_config(arch), backbone_weights=state)
    assert model(torch.rand(2, 1, 48, 48)).shape == (2, 7)
    assert model.head[-1].out_features == 7
    name, conv = fer.first_conv(model.backbone)
    # the 1-channel first conv is the sum (3x the mean) of the pretrained RGB filters
    assert conv.in_channels == 1
    assert torch.allclose(conv.weight, 3 * state[f"{name}.weight"].mean(1, keepdim=True), atol=1e-6)


def test_grayscale_conv_gives_the_rgb_conv_output_of_the_gray_image_repeated():
    rgb = stand_in_weights("resnet18")
    model = fer.TransferNet("resnet18")
    fer.load_backbone_weights(model, rgb, "stand-in")
    rgb_conv = model.backbone.conv1
    fer.convert_to_grayscale(model)
    gray = torch.rand(2, 1, 32, 32)
    assert torch.allclose(model.backbone.conv1(gray), rgb_conv(gray.expand(-1, 3, -1, -1)), atol=1e-5)


def test_missing_imagenet_weights_name_both_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(fer.DataError, match="--weights-path FILE.*--weights none"):
        train_transfer.imagenet_weights("resnet18")


def test_weights_file_of_another_network_fails_loudly(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(stand_in_weights("resnet18"), path)
    config = transfer_config("vgg16", weights="file", weights_path=str(path))
    with pytest.raises(fer.DataError, match=f"{path}: not a vgg16 backbone; missing keys"):
        fer.build_model(config, train_transfer.starting_weights(config))


def test_weights_file_without_classifier_loads(tmp_path):
    """Like a mobilenet_v2_imagenet_features.pth in FER_WEIGHTS: features only, no classifier."""
    state = {k: v for k, v in stand_in_weights("mobilenet_v2").items() if not k.startswith("classifier.")}
    path = tmp_path / "features.pth"
    torch.save(state, path)
    config = transfer_config(weights="file", weights_path=str(path))
    model = fer.build_model(config, train_transfer.starting_weights(config))
    assert torch.equal(model.backbone.features[1].conv[0][0].weight, state["features.1.conv.0.0.weight"])


@pytest.mark.parametrize("arch, unfreeze", [("resnet18", "0"), ("resnet18", "1"), ("vgg16", "2"),
                                            ("mobilenet_v2", "0"), ("mobilenet_v2", "all")])
def test_only_the_intended_parameters_require_and_receive_gradients(arch, unfreeze):
    model = fer.build_model(transfer_config(arch, unfreeze=unfreeze))
    model.train()
    nn.functional.cross_entropy(model(torch.rand(2, 1, 48, 48)), torch.tensor([0, 1])).backward()
    blocks = model.blocks()
    trainable = len(blocks) if unfreeze == "all" else int(unfreeze)
    for index, block in enumerate(blocks):
        should_train = index >= len(blocks) - trainable
        for parameter in nn.ModuleList(block).parameters():
            assert parameter.requires_grad == should_train
            assert (parameter.grad is not None) == should_train
        for batch_norm in (m for m in nn.ModuleList(block).modules() if isinstance(m, nn.BatchNorm2d)):
            assert batch_norm.training == should_train  # frozen BatchNorm keeps its statistics
    assert all(p.grad is not None for p in model.head.parameters())


def test_cached_features_equal_the_backbone_output_and_the_head_learns_from_them(kaggle_folder, tmp_path):
    config = transfer_config(unfreeze="0", epochs=2, batch_size=8)
    model = fer.build_model(config)
    data = fer.load_fer2013(kaggle_folder)
    features = train_transfer.cached_features(model, data, config)
    model.eval()
    with torch.no_grad():
        expected = model.features(data["val"]["images"].unsqueeze(1).float() / 255)
    assert torch.allclose(features["val"]["images"], expected, atol=1e-5)
    assert train_transfer.cached_features(model, data, config)["train"]["images"].shape == (42, 1280)  # from the cache
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    fer.train(model, features, config, tmp_path)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone_before.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_running_every_block_in_order_reproduces_the_backbone(arch):
    """--feature-block N runs the first N blocks by hand; with all of them, pooling their map must give
    exactly what the whole torchvision backbone gives."""
    whole = fer.build_model(transfer_config(arch)).eval()
    blocks = len(whole.blocks())
    assert blocks == fer.BLOCKS[arch]  # the count train_transfer.py checks --feature-block against
    tapped = fer.build_model(transfer_config(arch, feature_block=blocks)).eval()
    tapped.backbone.load_state_dict(whole.backbone.state_dict())
    images = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(tapped.features(images).mean((2, 3)), whole.features(images), atol=1e-5)


def test_blocks_above_the_feature_block_are_left_out_of_the_model():
    whole = fer.build_model(transfer_config())
    tapped = fer.build_model(transfer_config(feature_block=13))
    assert not any(key.startswith(("backbone.features.13.", "backbone.features.18.")) for key in tapped.state_dict())
    kept = sum(p.numel() for block in whole.blocks()[:13] for layer in block for p in layer.parameters())
    assert fer.count_parameters(tapped) == kept + fer.count_parameters(tapped.head)


def test_features_of_an_earlier_block_are_cached_and_train_a_head(kaggle_folder, tmp_path):
    config = transfer_config(unfreeze="0", feature_block=13, epochs=1, batch_size=8)
    model = fer.build_model(config)
    data = fer.load_fer2013(kaggle_folder)
    features = train_transfer.cached_features(model, data, config)
    assert features["train"]["images"].shape == (42, 96, 4, 4)  # 64-px input: block 13 has 96 channels at stride 16
    model.eval()
    with torch.no_grad():  # the head alone on cached features = the whole model on the images
        assert torch.allclose(model(features["val"]["images"]), model(data["val"]["images"].unsqueeze(1).float() / 255),
                              atol=1e-4)
    fer.train(model, features, config, tmp_path)
    assert (tmp_path / "best.pt").exists()


def test_cached_features_carry_the_labels_of_the_data_they_are_asked_for(kaggle_folder):
    # The same images under two label sets (FER-2013's, and FER+ targets): one cache file of features,
    # and each call gets its own labels and targets back, never those of the call that filled the cache.
    config = transfer_config(unfreeze="0", feature_block=13)
    model = fer.build_model(config)
    data = fer.load_fer2013(kaggle_folder)
    relabelled = {name: dict(split, labels=(split["labels"] + 1) % 7, targets=torch.rand(len(split["labels"]), 7))
                  for name, split in data.items()}
    first = train_transfer.cached_features(model, data, config)
    second = train_transfer.cached_features(model, relabelled, config)
    assert len(list(fer.CACHE_DIR.glob("features-*.pt"))) == 1
    for name in data:
        assert torch.equal(first[name]["images"], second[name]["images"])
        assert torch.equal(first[name]["labels"], data[name]["labels"]) and "targets" not in first[name]
        assert torch.equal(second[name]["labels"], relabelled[name]["labels"])
        assert torch.equal(second[name]["targets"], relabelled[name]["targets"])


@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_runs_a_training_step(arch, kaggle_folder, tmp_path):
    config = transfer_config(arch, epochs=1, batch_size=4, input_size=48)
    data = fer.load_fer2013(kaggle_folder)
    data["train"] = {key: value[:8] for key, value in data["train"].items()}
    progress = fer.train(fer.build_model(config), data, config, tmp_path)
    assert progress["epoch"] == 1 and progress["history"][0]["train_loss"] > 0


def test_train_transfer_cli_feature_mode_writes_a_run_that_evaluate_reads(kaggle_folder, tmp_path, torch_home):
    result = run_script("train_transfer.py", "--data", str(kaggle_folder), "--arch", "mobilenet_v2", "--mode",
                        "feature", "--input-size", "48", "--epochs", "2", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "runs").iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["mode"], config["weights"], config["unfreeze"], config["feature_block"]) == ("feature", "imagenet", "0", 13)
    result = run_script("evaluate.py", "--run", str(run_dir), "--data", str(kaggle_folder), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "eval_test.json").read_text())["images"] == 14
    result = run_script("compare.py", cwd=tmp_path)  # by default beside the runs, never over the committed docs/
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "runs" / "compare.md").read_text()
    assert "| mobilenet_v2 48px | feature extraction | ImageNet (torchvision) |" in table and "20,615" in table  # block 13's 96x3x3 map at 48 px
    assert (tmp_path / "runs" / "compare.png").exists() and (tmp_path / "runs" / "time_to_accuracy.png").exists()
    assert not (tmp_path / "docs").exists()


def test_train_transfer_without_weights_says_how_to_get_them(kaggle_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    # A proxy that refuses every connection: no download even where the internet is reachable.
    result = run_script("train_transfer.py", "--data", str(kaggle_folder), "--arch", "resnet18", cwd=tmp_path,
                        HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--weights-path" in result.stderr and "--weights none" in result.stderr


def test_a_feature_block_the_network_does_not_have_is_refused(kaggle_folder, tmp_path):
    result = run_script("train_transfer.py", "--data", str(kaggle_folder), "--mode", "feature", "--arch", "resnet18",
                        "--feature-block", "6", cwd=tmp_path)
    assert result.returncode == 2 and "resnet18 has blocks 1 to 5" in result.stderr


def test_weights_none_and_a_weights_file_together_are_refused(kaggle_folder, tmp_path):
    result = run_script("train_transfer.py", "--data", str(kaggle_folder), "--weights", "none",
                        "--weights-path", str(tmp_path / "w.pth"), cwd=tmp_path)
    assert result.returncode == 2 and "contradict" in result.stderr


@pytest.mark.parametrize("k", [0, 1, 2, 4, 7, 12, 19])
def test_training_the_top_k_blocks_of_mobilenet_v2_leaves_the_frozen_ones_exactly_as_they_were(k, tmp_path):
    config = transfer_config(unfreeze=str(k), epochs=1, batch_size=4, input_size=48, lr=0.1)
    model = fer.build_model(config)
    blocks = model.blocks()
    assert len(blocks) == 19
    frozen, top = nn.ModuleList([m for block in blocks[:19 - k] for m in block]), blocks[19 - k:]
    expected = fer.count_parameters(model.head) + sum(fer.count_parameters(m) for block in top for m in block)
    assert fer.count_parameters(model, trainable_only=True) == expected
    assert expected == {0: 8_967, 19: 2_232_263}.get(k, expected)  # the README's two ends of the curve
    # Weights and BatchNorm running statistics of the frozen blocks, before a real training epoch.
    frozen_before = {name: tensor.clone() for name, tensor in frozen.state_dict().items()}
    top_before = [p.clone() for block in top for m in block for p in m.parameters()]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 48, 48), dtype=torch.uint8, generator=generator)
    data = {split: {"images": images, "labels": torch.arange(8) % 7} for split in ("train", "val")}
    fer.train(model, data, config, tmp_path)
    for name, tensor in frozen.state_dict().items():
        assert torch.equal(tensor, frozen_before[name]), name  # running_mean / running_var included
    top_after = [p for block in top for m in block for p in m.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(top_before, top_after))
