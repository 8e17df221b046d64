"""Metrics against numbers worked out by hand."""
import pytest
import torch

import fer


def test_classification_report_matches_a_hand_computed_confusion_matrix():
    labels = torch.tensor([0, 0, 0, 1, 1, 3])
    predictions = torch.tensor([0, 0, 1, 1, 3, 3])
    report = fer.classification_report(labels, predictions)
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
