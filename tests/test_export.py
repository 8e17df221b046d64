"""export.py: the ONNX file computes the probabilities the PyTorch model computes, at any batch size."""
import copy
import json
import sys

import pytest
import torch
from PIL import Image

import export
import fer
from conftest import run_script, training_config, write_kaggle_folder


@pytest.fixture
def onnxruntime():
    """The export tests need the optional packages of requirements-export.txt (CI installs them)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def write_run(folder, config):
    """A run folder with an untrained model: the export must reproduce any weights. Its BatchNorm
    statistics are set away from (0, 1), so an export in training mode would be caught."""
    torch.manual_seed(0)
    model = fer.build_model(config)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    folder.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": config}, folder / "best.pt")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def onnx_probabilities(onnxruntime, path, images):
    runtime = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(runtime.run(None, {"images": fer.as_model_input(images).numpy()})[0])


def test_the_onnx_file_matches_pytorch_on_privatetest_at_batch_1_and_5(tmp_path, onnxruntime):
    data = write_kaggle_folder(tmp_path / "fer2013")
    # The run was made on another machine: the check finds the data through FER_DATA, not the recorded path.
    run = write_run(tmp_path / "run", training_config(width=4, data=str(tmp_path / "another-machine")))
    result = run_script("export.py", "--run", str(run), cwd=tmp_path, FER_DATA=str(data))
    assert result.returncode == 0, result.stderr
    assert f"PrivateTest images of {data}" in result.stdout and "largest absolute difference" in result.stdout
    assert (run / "model.onnx").is_file()  # beside best.pt by default

    model, _ = fer.load_run(run, torch.device("cpu"))
    images = fer.load_fer2013(data)["test"]["images"][:5]
    expected = fer.predict_probabilities(model, images, torch.device("cpu"))
    for batch in (images[:1], images):  # one file, two batch sizes
        probabilities = onnx_probabilities(onnxruntime, run / "model.onnx", batch)
        assert probabilities.shape == (len(batch), 7)
        assert torch.allclose(probabilities, expected[:len(batch)], atol=1e-5)
        assert torch.allclose(probabilities.sum(1), torch.ones(len(batch)), atol=1e-5)  # the softmax is inside


@pytest.mark.parametrize("config", [training_config(arch="vggnet", width=4, dropout=0.3),
                                    dict(arch="mobilenet_v2", input_size=64, feature_block=None, unfreeze="all")],
                         ids=["vggnet", "mobilenet_v2"])
def test_every_architecture_exports_with_a_free_batch_size(tmp_path, onnxruntime, config):
    model = fer.load_run(write_run(tmp_path / "run", config), torch.device("cpu"))[0]
    export.export(model, tmp_path / "model.onnx")
    images = torch.randint(0, 256, (5, 48, 48), dtype=torch.uint8)
    expected = fer.predict_probabilities(model, images, torch.device("cpu"))
    for batch in (images[:1], images):
        assert torch.allclose(onnx_probabilities(onnxruntime, tmp_path / "model.onnx", batch),
                              expected[:len(batch)], atol=1e-5)


def test_an_onnx_file_that_differs_from_the_model_fails_the_check(tmp_path, onnxruntime, monkeypatch, capsys):
    run = write_run(tmp_path / "run", training_config(width=4, data=str(tmp_path / "no-data")))
    real_export = export.export

    def export_a_changed_model(model, path):
        changed = copy.deepcopy(model)
        with torch.no_grad():
            changed.classifier[-1].bias[0] += 1.0  # "angry" a little likelier
        real_export(changed, path)

    monkeypatch.setattr(export, "export", export_a_changed_model)
    monkeypatch.setattr(fer, "DEFAULT_DATA", str(tmp_path / "no-data"))  # what FER_DATA sets
    monkeypatch.setattr(sys, "argv", ["export.py", "--run", str(run), "--count", "8"])
    with pytest.raises(SystemExit) as failure:
        export.main()
    assert "differs from the PyTorch model" in str(failure.value)
    assert "random-noise images" in capsys.readouterr().out  # no data, no images named: noise, and it says so


def test_named_face_crops_are_the_check_images(tmp_path):
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"face{index}.png")
        Image.new("L", (60, 60), 40 * index).save(paths[-1])
    args = export.argparse.Namespace(images=[str(p) for p in paths], data=None, count=512)
    images, description = export.check_images(args, training_config(data=str(tmp_path / "fer2013")))
    assert images.shape == (3, 48, 48) and images.dtype == torch.uint8 and description == "3 image(s) named"


def test_a_missing_package_is_one_line_naming_make_install_export(tmp_path):
    # A stand-in that fails to import as a package that is not installed does.
    (tmp_path / "onnxruntime.py").write_text("raise ModuleNotFoundError(\"No module named 'onnxruntime'\")\n")
    result = run_script("export.py", "--run", str(tmp_path), cwd=tmp_path, PYTHONPATH=str(tmp_path))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "onnxruntime" in result.stderr and "make install-export" in result.stderr


def test_the_check_images_come_from_data_then_fer_data_never_from_the_path_the_run_recorded(tmp_path, monkeypatch):
    data = write_kaggle_folder(tmp_path / "fer2013")
    config = training_config(data=str(tmp_path / "another-machine"))
    monkeypatch.setattr(fer, "DEFAULT_DATA", str(data))  # what FER_DATA sets
    images, description = export.check_images(export.argparse.Namespace(images=[], data=None, count=5), config)
    assert images.shape == (5, 48, 48) and description == f"5 PrivateTest images of {data}"
    monkeypatch.setattr(fer, "DEFAULT_DATA", str(tmp_path / "missing"))
    _, description = export.check_images(export.argparse.Namespace(images=[], data=str(data), count=5), config)
    assert description == f"5 PrivateTest images of {data}"


def test_without_the_dataset_the_check_on_random_noise_comes_with_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fer, "DEFAULT_DATA", str(tmp_path / "missing"))
    args = export.argparse.Namespace(images=[], data=None, count=5)
    images, description = export.check_images(args, training_config())
    assert images.shape == (5, 48, 48) and description == "5 random-noise images"
    warning = capsys.readouterr().err
    assert warning.startswith(f"warning: no dataset at {tmp_path / 'missing'}") and "random-noise" in warning


def test_a_dataset_named_with_data_must_be_there(tmp_path):
    args = export.argparse.Namespace(images=[], data=str(tmp_path / "missing"), count=5)
    with pytest.raises(fer.DataError, match="dataset not found"):
        export.check_images(args, training_config())


def test_out_in_a_folder_that_does_not_exist_yet_creates_the_folder(tmp_path, onnxruntime, monkeypatch):
    run = write_run(tmp_path / "run", training_config(width=4))
    out = tmp_path / "new" / "folder" / "model.onnx"
    monkeypatch.setattr(fer, "DEFAULT_DATA", str(tmp_path / "no-data"))
    monkeypatch.setattr(sys, "argv", ["export.py", "--run", str(run), "--count", "4", "--out", str(out)])
    export.main()
    assert out.is_file() and not (run / "model.onnx").exists()
    monkeypatch.setattr(sys, "argv", ["export.py", "--run", str(run), "--count", "4", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=f"error: .*Is a directory: '{tmp_path}'"):  # a folder is one error line
        export.main()
