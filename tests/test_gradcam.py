"""Grad-CAM against maps whose answer is known, and against a hook-free computation."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import fer
from conftest import write_kaggle_folder, run_script


class TopLeftQuadrantModel(nn.Module):
    """Decides from the top-left quadrant alone. Its last conv has one channel per quadrant (as deep
    CNN features are often specific to one part of a face), and only the top-left one reaches the
    class score: the activations are high everywhere, so only Grad-CAM's channel weights can
    single out the quadrant."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(4)  # 48 -> 12, so the map must also be upsampled
        self.conv = nn.Conv2d(4, 4, 1, bias=False)
        nn.init.eye_(self.conv.weight.view(4, 4))
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, len(fer.EMOTIONS))
        nn.init.zeros_(self.head.weight), nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight[fer.EMOTIONS.index("happy"), 0] = 1.0  # happy <- top-left channel

    def forward(self, images):
        pooled = self.pool(images)
        top, left = torch.arange(12).view(12, 1) < 6, torch.arange(12).view(1, 12) < 6
        quadrants = torch.cat([pooled * (top & left), pooled * (top & ~left),
                               pooled * (~top & left), pooled * (~top & ~left)], 1)
        return self.head(self.relu(self.conv(quadrants)).mean((2, 3)))


def tiny_conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(6 * 12 * 12, 7))


def hooks_left_on(model):
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")
    return [(name, kind) for name, module in model.named_modules() for kind in kinds if getattr(module, kind, None)]


def test_the_map_lights_up_the_one_region_the_decision_depends_on():
    images = torch.rand(3, 1, 48, 48) * 0.5
    images[:, :, 30:44, 30:44] = 1.0  # the brightest spot is bottom-right, where the model never looks
    cams = fer.grad_cam(TopLeftQuadrantModel(), images, classes=[fer.EMOTIONS.index("happy")] * 3)
    assert cams.shape == (3, 48, 48) and cams.min() >= 0 and torch.allclose(cams.amax((1, 2)), torch.ones(3))
    for cam in cams:
        row, column = divmod(cam.argmax().item(), 48)
        assert row < 24 and column < 24
        assert cam[:20, :20].mean() > 0.3  # the quadrant, bar the upsampling's blur at its edges
        assert cam[28:, :].max() < 1e-6 and cam[:, 28:].max() < 1e-6  # nothing elsewhere


def grad_cam_without_hooks(activations, head, classes):
    """Grad-CAM written out for a network run in two halves: `activations` from the first, `head` the rest."""
    activations = activations.detach().requires_grad_(True)
    logits = head(activations)
    [gradients] = torch.autograd.grad(logits[torch.arange(len(classes)), classes].sum(), activations)
    cams = F.relu(torch.einsum("bc,bchw->bhw", gradients.mean((2, 3)), activations)).detach()
    cams = F.interpolate(cams[:, None], size=(48, 48), mode="bilinear", align_corners=False)[:, 0]
    return cams / cams.amax((1, 2), keepdim=True)


def test_hooked_maps_equal_grad_cam_computed_without_hooks():
    net, images = tiny_conv_net(), torch.rand(5, 1, 48, 48)
    predicted = net(images).argmax(1)
    conv_output = net[:4](images)

    # The default target: the last conv's ReLU, net[4].
    expected = grad_cam_without_hooks(F.relu(conv_output), net[5:], predicted)
    assert torch.allclose(fer.grad_cam(net, images), expected, atol=1e-6)
    # The conv itself, although the in-place ReLU after it overwrites its output in the forward pass.
    expected = grad_cam_without_hooks(conv_output, lambda a: net[5:](F.relu(a)), predicted)
    assert torch.allclose(fer.grad_cam(net, images, layer=net[3]), expected, atol=1e-6)
    # Another class gives other maps: the argument is really used.
    other = (predicted + 1) % 7
    expected = grad_cam_without_hooks(F.relu(conv_output), net[5:], other)
    assert torch.allclose(fer.grad_cam(net, images, classes=other), expected, atol=1e-6)
    assert not torch.allclose(fer.grad_cam(net, images), expected, atol=1e-3)


def test_no_hook_is_left_on_the_model_even_when_the_forward_pass_raises():
    net = tiny_conv_net()
    fer.grad_cam(net, torch.rand(2, 1, 48, 48))
    assert hooks_left_on(net) == []
    with pytest.raises(RuntimeError):  # 40x40 images do not fit the 6*12*12 linear layer
        fer.grad_cam(net, torch.rand(2, 1, 40, 40))
    assert hooks_left_on(net) == []
    assert all(p.grad is None for p in net.parameters())  # and the weights' gradients are untouched


def test_a_network_with_frozen_weights_gets_the_same_maps():
    net, images = tiny_conv_net(), torch.rand(3, 1, 48, 48)
    trainable = fer.grad_cam(net, images)
    net.requires_grad_(False)  # as in a transfer model's frozen backbone
    assert torch.equal(fer.grad_cam(net, images), trainable)


def test_the_default_target_is_the_last_conv_after_its_relu():
    plain, normalised = fer.BaselineCNN(width=8), fer.VGGNet(width=8)
    assert fer.last_conv_layer(plain) is plain.features[7]  # conv 6 -> ReLU 7
    assert fer.last_conv_layer(normalised) is normalised.features[26]  # conv 24 -> BatchNorm 25 -> ReLU 26
    no_relu = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.LazyLinear(7))
    assert fer.last_conv_layer(no_relu) is no_relu[1]


def test_gradcam_writes_grids_class_means_and_single_image_explanations(tmp_path):
    data = write_kaggle_folder(tmp_path / "fer2013")
    result = run_script("train_baseline.py", "--data", str(data), "--epochs", "1", "--batch-size", "8",
                        "--width", "8", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "runs").iterdir()

    result = run_script("gradcam.py", "--run", str(run_dir), "--data", str(data), "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = {f"gradcam_{emotion}.png" for emotion in fer.EMOTIONS} | {"gradcam_class_means.png"}
    assert expected <= {p.name for p in run_dir.iterdir()}

    Image.new("RGB", (64, 80), "gray").save(tmp_path / "face.jpg")
    result = run_script("gradcam.py", "--run", str(run_dir), "--image", str(tmp_path / "face.jpg"),
                        "--layer", "features.3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "gradcam_image_face.png").is_file()

    for bad_arguments, message in ((["--image", str(tmp_path / "missing.jpg")], "missing.jpg"),
                                   (["--layer", "features.99"], "features.99")):
        result = run_script("gradcam.py", "--run", str(run_dir), *bad_arguments, cwd=tmp_path)
        assert result.returncode != 0 and result.stderr.startswith("error:") and message in result.stderr
        assert "Traceback" not in result.stderr
