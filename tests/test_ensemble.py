"""Test-time views and ensembles: what evaluate.py averages, checked by hand."""
import json

import pytest
import torch

import evaluate
import fer
from conftest import run_script


def test_flipping_twice_is_the_identity_and_views_keep_their_shape():
    batch = torch.rand(3, 1, 48, 48)
    assert torch.equal(batch.flip(-1).flip(-1), batch)
    assert len(fer.test_time_views(batch, False)) == 1
    flip = fer.test_time_views(batch, "flip")
    assert len(flip) == 2 and torch.equal(flip[1], batch.flip(-1))
    ten = fer.test_time_views(batch, "ten")
    assert len(ten) == 10 and all(view.shape == batch.shape for view in ten)
    assert torch.equal(ten[0], batch) and torch.equal(ten[5], batch.flip(-1))
    for view, mirrored in zip(ten[:5], ten[5:]):
        assert torch.equal(mirrored.flip(-1), view)


def test_ten_views_shift_the_face_by_tta_shift_pixels_repeating_the_edge():
    batch = torch.arange(48.0).repeat(48, 1)[None, None]  # each pixel holds its column index
    shift = fer.TTA_SHIFT
    right, left = fer.test_time_views(batch, "ten")[1:3]
    assert torch.equal(right[0, 0, 0, :-shift], batch[0, 0, 0, shift:])  # content moved by `shift` columns
    assert torch.equal(right[0, 0, 0, -shift:], torch.full((shift,), 47.0))  # the edge repeated into the gap
    assert torch.equal(left[0, 0, 0, shift:], batch[0, 0, 0, :-shift])


class Constant(torch.nn.Module):
    """A "model" that gives every image the same logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, images):
        return self.logits.expand(len(images), -1)


def test_an_ensemble_averages_its_members_probabilities():
    a, b = [2.0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0, 0, 0]
    images = torch.zeros(4, 48, 48, dtype=torch.uint8)
    probabilities = evaluate.ensemble_probabilities([Constant(a), Constant(b)], images, torch.device("cpu"), tta="ten").mean(0)
    # by hand: softmax of a gives e^2 / (e^2 + 6) to angry; of b, e / (e + 6) to happy
    e = torch.e
    expected = torch.tensor([e ** 2 / (e ** 2 + 6) + 1 / (e + 6), 1 / (e ** 2 + 6) + 1 / (e + 6),
                             1 / (e ** 2 + 6) + 1 / (e + 6), 1 / (e ** 2 + 6) + e / (e + 6),
                             1 / (e ** 2 + 6) + 1 / (e + 6), 1 / (e ** 2 + 6) + 1 / (e + 6),
                             1 / (e ** 2 + 6) + 1 / (e + 6)]) / 2
    assert torch.allclose(probabilities, expected.expand(4, -1), atol=1e-6)


def data_of(run):
    """Where the run found its data: a record in config.json, which the tools are told with --data or FER_DATA."""
    return json.loads((run / "config.json").read_text())["data"]


@pytest.fixture
def two_runs(kaggle_folder, tmp_path):
    runs = []
    for arch, extra in (("baseline", []), ("vggnet", ["--ema", "0.9"])):
        result = run_script("train_baseline.py", "--arch", arch, "--data", str(kaggle_folder), "--epochs", "1",
                            "--batch-size", "8", "--width", "4", "--device", "cpu", "--name", arch, *extra,
                            cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        runs.append(next((tmp_path / "runs").glob(f"*-{arch}")))
    return runs


def test_evaluate_reports_an_ensemble_of_two_runs_like_a_single_run(two_runs, tmp_path):
    out = tmp_path / "ensemble"
    result = run_script("evaluate.py", "--run", str(two_runs[0]), "--run", str(two_runs[1]), "--out", str(out),
                        cwd=tmp_path, FER_DATA=str(data_of(two_runs[0])))
    assert result.returncode == 0, result.stderr
    assert "ensemble of 2 runs" in result.stdout and "ten-view TTA" in result.stdout
    report = json.loads((out / "eval_test.json").read_text())
    assert report["runs"] == [str(run) for run in two_runs] and report["images"] == 14
    assert {"accuracy", "macro_f1", "accuracy_flip_tta", "accuracy_ten_view_tta", "per_class"} <= set(report)
    assert set(report["test_time_views"]) == {"single", "flip", "ten"}
    assert json.loads((out / "ensemble.json").read_text())["members"] == [str(run) for run in two_runs]
    assert (out / "confusion_test.png").stat().st_size > 0

    # The ensemble's accuracy is that of the mean of the members' probabilities, worked out here.
    data = fer.load_fer2013(data_of(two_runs[0]))
    models = [fer.load_run(run, torch.device("cpu"))[0] for run in two_runs]
    for view, tta in (("single", False), ("flip", "flip"), ("ten", "ten")):  # evaluate.py derives all three from the ten
        mean = sum(fer.predict_probabilities(model, data["test"]["images"], torch.device("cpu"), tta=tta)
                   for model in models) / 2
        accuracy = (mean.argmax(1) == data["test"]["labels"]).float().mean().item()
        assert report["test_time_views"][view]["accuracy"] == pytest.approx(accuracy)


def test_evaluate_single_view_reports_no_tta(two_runs, tmp_path):
    result = run_script("evaluate.py", "--run", str(two_runs[0]), "--single-view", "--data", data_of(two_runs[0]),
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "single view" in result.stdout and "TTA" not in result.stdout
    report = json.loads((two_runs[0] / "eval_test.json").read_text())
    assert set(report["test_time_views"]) == {"single"} and "accuracy_flip_tta" not in report


def test_ensembles_are_ranked_on_their_mean_probabilities_within_the_training_budget():
    import choose_ensemble

    labels = torch.tensor([0, 1, 2, 3])
    one_hot = torch.eye(7)[labels]
    wrong = torch.eye(7)[torch.tensor([6, 6, 6, 6])]
    # a: right on images 0-1; b: right on 2-3; each is 0.6 sure where right and 0.4 sure of "neutral" elsewhere.
    a = torch.cat([0.6 * one_hot[:2] + 0.4 * wrong[:2], 0.4 * one_hot[2:] + 0.6 * wrong[2:]])
    b = torch.cat([0.4 * one_hot[:2] + 0.6 * wrong[:2], 0.6 * one_hot[2:] + 0.4 * wrong[2:]])
    c = wrong  # always wrong, and confident
    probabilities, minutes = {"a": a, "b": b, "c": c}, {"a": 50.0, "b": 60.0, "c": 10.0}
    ranked = choose_ensemble.rank_combinations(probabilities, labels, minutes, budget=200)
    # by hand: a + b averages to 0.5 right / 0.5 neutral on every image; argmax picks the lower index,
    # the right class (0-3 < 6): 100%. a alone and b alone: 50%, c: 0%, a + b + c: neutral everywhere.
    assert ranked[0] == (1.0, 110.0, ("a", "b"))
    assert [(accuracy, runs) for accuracy, _, runs in ranked[1:3]] == [(0.5, ("a",)), (0.5, ("b",))]  # cheaper first
    assert len(ranked) == 7
    within_100 = choose_ensemble.rank_combinations(probabilities, labels, minutes, budget=100)
    assert ("a", "b") not in [runs for _, _, runs in within_100] and within_100[0][2] == ("a",)


def test_choose_ensemble_scores_two_runs_on_publictest_and_prints_the_command(two_runs, tmp_path):
    data = ["--data", data_of(two_runs[0])]
    result = run_script("choose_ensemble.py", *map(str, two_runs), "--budget", "1000", *data, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 of 3 combinations" in result.stdout and "make ensemble RUNS=" in result.stdout
    assert not list(two_runs[0].glob("eval_*.json"))  # no report: PrivateTest is for make ensemble
    # Each run's probabilities are kept beside best.pt and used again, until best.pt changes.
    cache = two_runs[0] / "publictest_ten_view.pt"
    labels = fer.load_fer2013(data_of(two_runs[0]))["val"]["labels"]
    torch.save(torch.eye(7)[labels], cache)  # a stand-in that is right on every image
    result = run_script("choose_ensemble.py", str(two_runs[0]), *data, cwd=tmp_path)
    assert f"{two_runs[0]}: PublicTest ten-view 100.00%" in result.stdout
    (two_runs[0] / "best.pt").touch()
    result = run_script("choose_ensemble.py", str(two_runs[0]), *data, cwd=tmp_path)
    assert "100.00%" not in result.stdout and not torch.equal(torch.load(cache), torch.eye(7)[labels])
    result = run_script("choose_ensemble.py", *map(str, two_runs), "--budget", "0", *data, cwd=tmp_path)
    assert result.returncode == 1 and "longer than --budget 0" in result.stderr
