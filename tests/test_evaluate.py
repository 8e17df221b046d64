"""Metrics against numbers worked out by hand, and what evaluate.py reads and computes."""
import json
import shutil
import sys

import pytest
import torch

import evaluate
import fer
from conftest import run_script


def test_classification_report_matches_a_hand_computed_confusion_matrix():
    labels = torch.tensor([0, 0, 0, 1, 1, 3])
    predictions = torch.tensor([0, 0, 1, 1, 3, 3])
    report = evaluate.classification_report(labels, predictions)
    confusion = report["confusion"]
    assert confusion[0][:4] == [2, 1, 0, 0] and confusion[1][:4] == [0, 1, 0, 1] and confusion[3][:4] == [0, 0, 0, 1]
    assert report["accuracy"] == pytest.approx(4 / 6)
    angry, disgust, happy = (report["per_class"][name] for name in ("angry", "disgust", "happy"))
    assert (angry["precision"], angry["recall"]) == (pytest.approx(1.0), pytest.approx(2 / 3))
    assert angry["f1"] == pytest.approx(0.8)
    assert (disgust["precision"], disgust["recall"], disgust["f1"]) == (pytest.approx(0.5),) * 3
    assert (happy["precision"], happy["recall"]) == (pytest.approx(0.5), pytest.approx(1.0))
    # classes with no images and no predictions count as F1 0 in the macro average
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 7)
    assert angry["support"] == 3


def test_flip_tta_averages_the_prediction_of_the_mirror_image():
    class LeftHalfBrightness(torch.nn.Module):
        def forward(self, images):
            left = images[..., :24].mean((1, 2, 3))
            return torch.stack([left * 10] + [torch.zeros_like(left)] * 6, 1)

    images = torch.zeros(1, 48, 48, dtype=torch.uint8)
    images[..., :24] = 255
    plain = fer.predict_probabilities(LeftHalfBrightness(), images, torch.device("cpu"))
    tta = fer.predict_probabilities(LeftHalfBrightness(), images, torch.device("cpu"), tta=True)
    mirrored = torch.full((7,), 1 / 7)
    assert torch.allclose(tta[0], (plain[0] + mirrored) / 2)


def untrained_run(folder, data):
    """A run folder as train_baseline.py leaves it, with a tiny untrained baseline; `data` is its recorded path."""
    folder.mkdir()
    config = {"arch": "baseline", "width": 4, "seed": 0, "data": data}
    torch.save({"model": fer.build_model(config).state_dict(), "config": config}, folder / "best.pt")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_ten_forward_passes_per_image_give_the_single_view_flip_and_ten_view_reports(kaggle_folder, tmp_path,
                                                                                      monkeypatch):
    run = untrained_run(tmp_path / "run", str(kaggle_folder))
    images_seen, load_run = [], fer.load_run

    def load_and_count(*args, **kwargs):
        model, config = load_run(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: images_seen.append(len(inputs[0])))
        return model, config

    monkeypatch.setattr(fer, "load_run", load_and_count)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--run", str(run), "--data", str(kaggle_folder)])
    evaluate.main()
    report = json.loads((run / "eval_test.json").read_text())
    assert set(report["test_time_views"]) == {"single", "flip", "ten"}
    assert sum(images_seen) == 10 * report["images"]


def test_the_data_comes_from_data_then_fer_data_then_data_fer2013_never_from_the_run(kaggle_folder, tmp_path,
                                                                                      monkeypatch):
    # The run was trained on another machine: the path it recorded does not exist here.
    run = untrained_run(tmp_path / "run", str(tmp_path / "elsewhere" / "fer2013"))
    monkeypatch.delenv("FER_DATA", raising=False)
    result = run_script("evaluate.py", "--run", str(run), cwd=tmp_path)
    assert result.returncode == 1 and f"{tmp_path / 'elsewhere'}" not in result.stderr
    assert "data/fer2013: dataset not found" in result.stderr
    assert run_script("evaluate.py", "--run", str(run), cwd=tmp_path, FER_DATA=str(kaggle_folder)).returncode == 0
    assert run_script("evaluate.py", "--run", str(run), "--data", str(kaggle_folder), cwd=tmp_path,
                      FER_DATA=str(tmp_path / "missing")).returncode == 0
    shutil.copytree(kaggle_folder, tmp_path / "data" / "fer2013")
    result = run_script("evaluate.py", "--run", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
