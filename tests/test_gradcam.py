"""Grad-CAM against maps whose answer is known, and against a hook-free computation; gradcam.py finds its
data and faces as the other tools do, and writes beside the run folder, never into it."""
import json
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import fer
import gradcam
import predict
from conftest import PROJECT_DIR, run_script, training_config, write_kaggle_folder

# A real photo (NASA, public domain) the repository ships for its README; OpenCV's Haar cascade finds her face.
ASTRONAUT = PROJECT_DIR / "docs" / "astronaut.jpg"


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
    cams = gradcam.grad_cam(TopLeftQuadrantModel(), images, classes=[fer.EMOTIONS.index("happy")] * 3)
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
    assert torch.allclose(gradcam.grad_cam(net, images), expected, atol=1e-6)
    # The conv itself, although the in-place ReLU after it overwrites its output in the forward pass.
    expected = grad_cam_without_hooks(conv_output, lambda a: net[5:](F.relu(a)), predicted)
    assert torch.allclose(gradcam.grad_cam(net, images, layer=net[3]), expected, atol=1e-6)
    # Another class gives other maps: the argument is really used.
    other = (predicted + 1) % 7
    expected = grad_cam_without_hooks(F.relu(conv_output), net[5:], other)
    assert torch.allclose(gradcam.grad_cam(net, images, classes=other), expected, atol=1e-6)
    assert not torch.allclose(gradcam.grad_cam(net, images), expected, atol=1e-3)


def test_no_hook_is_left_on_the_model_even_when_the_forward_pass_raises():
    net = tiny_conv_net()
    gradcam.grad_cam(net, torch.rand(2, 1, 48, 48))
    assert hooks_left_on(net) == []
    with pytest.raises(RuntimeError):  # 40x40 images do not fit the 6*12*12 linear layer
        gradcam.grad_cam(net, torch.rand(2, 1, 40, 40))
    assert hooks_left_on(net) == []
    assert all(p.grad is None for p in net.parameters())  # and the weights' gradients are untouched


def test_a_network_with_frozen_weights_gets_the_same_maps():
    net, images = tiny_conv_net(), torch.rand(3, 1, 48, 48)
    trainable = gradcam.grad_cam(net, images)
    net.requires_grad_(False)  # as in a transfer model's frozen backbone
    assert torch.equal(gradcam.grad_cam(net, images), trainable)


def test_the_default_target_is_the_last_conv_after_its_relu():
    plain, normalised = fer.BaselineCNN(width=8), fer.VGGNet(width=8)
    assert gradcam.last_conv_layer(plain) is plain.features[7]  # conv 6 -> ReLU 7
    # VGGNet pools its last conv before the BatchNorm and ReLU: the conv's own map is the target, which at
    # 6x6 is twice as fine as the pooled ReLU's
    assert gradcam.last_conv_layer(normalised) is normalised.features[21]  # conv 21 -> MaxPool 22 -> BatchNorm 23
    conv_bn_relu = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    assert gradcam.last_conv_layer(conv_bn_relu) is conv_bn_relu[2]  # conv -> BatchNorm -> ReLU
    no_relu = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.LazyLinear(7))
    assert gradcam.last_conv_layer(no_relu) is no_relu[1]


def test_gradcam_writes_grids_class_means_and_single_image_explanations(tmp_path):
    data = write_kaggle_folder(tmp_path / "fer2013")
    result = run_script("train_baseline.py", "--data", str(data), "--epochs", "1", "--batch-size", "8",
                        "--width", "8", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "runs").iterdir()

    out = tmp_path / "cams"
    result = run_script("gradcam.py", "--run", str(run_dir), "--data", str(data), "--device", "cpu",
                        "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = {f"gradcam_{emotion}.png" for emotion in fer.EMOTIONS} | {"gradcam_class_means.png"}
    assert expected <= {p.name for p in out.iterdir()}

    Image.new("RGB", (64, 80), "gray").save(tmp_path / "face.jpg")
    result = run_script("gradcam.py", "--run", str(run_dir), "--image", str(tmp_path / "face.jpg"), "--no-detect",
                        "--layer", "features.3", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "gradcam_image_face.png").is_file()

    for bad_arguments, message in ((["--image", str(tmp_path / "missing.jpg")], "missing.jpg"),
                                   (["--layer", "features.99"], "features.99")):
        result = run_script("gradcam.py", "--run", str(run_dir), *bad_arguments, cwd=tmp_path)
        assert result.returncode != 0 and result.stderr.startswith("error:") and message in result.stderr
        assert "Traceback" not in result.stderr


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as train_*.py leaves it, made on a machine whose dataset path is not there."""
    torch.manual_seed(0)
    config = training_config(data=str(tmp_path / "another-machine" / "fer2013"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"model": fer.build_model(config).state_dict(), "config": config}, run_dir / "best.pt")
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def test_the_data_comes_from_data_then_fer_data_never_from_the_path_the_run_recorded(tmp_path, run_dir):
    data = write_kaggle_folder(tmp_path / "fer2013")
    result = run_script("gradcam.py", "--run", str(run_dir), cwd=tmp_path, FER_DATA=str(data))
    assert result.returncode == 0, result.stderr
    assert "PrivateTest (14 images)" in result.stdout
    result = run_script("gradcam.py", "--run", str(run_dir), "--data", str(data), cwd=tmp_path,
                        FER_DATA=str(tmp_path / "missing"))
    assert result.returncode == 0, result.stderr


def test_pictures_go_to_out_or_to_a_folder_named_for_the_run_never_into_the_run_folder(tmp_path, run_dir):
    data = write_kaggle_folder(tmp_path / "fer2013")
    run_files = sorted(run_dir.iterdir())
    result = run_script("gradcam.py", "--run", str(run_dir), "--data", str(data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gradcam" / "run" / "gradcam_class_means.png").is_file()

    Image.fromarray(fer.load_fer2013(data)["test"]["images"][0].numpy()).save(tmp_path / "crop.png")
    out = tmp_path / "new" / "folder"
    result = run_script("gradcam.py", "--run", str(run_dir), "--image", str(tmp_path / "crop.png"), "--no-detect",
                        "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [path.name for path in out.iterdir()] == ["gradcam_image_crop.png"]
    assert sorted(run_dir.iterdir()) == run_files


def test_a_photo_is_explained_at_the_face_predict_finds_not_shrunk_whole(tmp_path, run_dir, monkeypatch, capsys):
    pytest.importorskip("cv2", reason="face detection needs OpenCV: make install-predict")
    faces, boxes = gradcam.faces_in_picture(ASTRONAUT, detect=True)
    [(left, top, width, height)] = boxes
    assert abs(left + width / 2 - 224) < 15 and abs(top + height / 2 - 114) < 15  # on her face
    assert torch.equal(faces, predict.crop_faces(predict.open_image(ASTRONAUT), boxes))

    monkeypatch.setattr(sys, "argv", ["gradcam.py", "--run", str(run_dir), "--image", str(ASTRONAUT),
                                      "--out", str(tmp_path / "out")])
    gradcam.main()
    assert f"face at {boxes[0]}" in capsys.readouterr().out
    assert (tmp_path / "out" / "gradcam_image_astronaut.png").is_file()


def test_a_picture_without_a_face_is_an_error_that_suggests_no_detect(tmp_path, run_dir, monkeypatch):
    pytest.importorskip("cv2", reason="face detection needs OpenCV: make install-predict")
    wall = tmp_path / "wall.png"
    Image.new("RGB", (320, 240), (180, 170, 160)).save(wall)
    monkeypatch.setattr(sys, "argv", ["gradcam.py", "--run", str(run_dir), "--image", str(wall)])
    with pytest.raises(SystemExit, match=f"error: {wall}: no face found .*pass --no-detect"):
        gradcam.main()


def test_without_opencv_it_says_how_to_install_it_and_no_detect_still_works(tmp_path, run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    crop = tmp_path / "crop.png"
    Image.new("L", (48, 48), 128).save(crop)
    arguments = ["gradcam.py", "--run", str(run_dir), "--image", str(crop), "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", arguments)
    with pytest.raises(SystemExit, match="error: .*need OpenCV: run `make install-predict`.*--no-detect"):
        gradcam.main()
    monkeypatch.setattr(sys, "argv", arguments + ["--no-detect"])
    gradcam.main()
    assert (tmp_path / "out" / "gradcam_image_crop.png").is_file()
