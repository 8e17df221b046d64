"""release.py: runs/release is rebuilt from a run folder, holds only what inference needs, and predicts
what the run predicts; gradcam.py uses it when no --run is named."""
import json
import shlex
import shutil
import sys

import pytest
import torch
from PIL import Image

import fer
import gradcam
import release
import train_baseline
from conftest import PROJECT_DIR, run_script, write_kaggle_folder

RELEASE_FILES = {"best.pt", "config.json", "eval_test.json", "confusion_test.png", "metrics.jsonl", "curves.png",
                 "RELEASE.md"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(project-like folder, run folder): a tiny baseline trained by train_baseline.py, as a user would."""
    root = tmp_path_factory.mktemp("project")
    data = write_kaggle_folder(root / "fer2013")
    result = run_script("train_baseline.py", "--data", str(data), "--name", "tiny", "--epochs", "2",
                        "--batch-size", "16", "--width", "4", cwd=root, FER_CACHE=str(root / "cache"))
    assert result.returncode == 0, result.stderr
    [run] = (root / "runs").iterdir()
    return root, run


def test_a_release_holds_the_stripped_weights_its_evaluation_and_predicts_like_the_run(trained, tmp_path):
    root, run = trained
    # Without its evaluation: release.py runs evaluate.py first.
    source = shutil.copytree(run, tmp_path / run.name, ignore=shutil.ignore_patterns("eval_*", "confusion_*"))
    result = run_script("release.py", "--run", str(source), "--out", str(tmp_path / "release"), cwd=root)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "release"
    assert {path.name for path in out.iterdir()} == RELEASE_FILES  # no last.pt, nothing else
    assert (source / "eval_test.json").is_file()

    checkpoint = torch.load(out / "best.pt", weights_only=True)
    assert set(checkpoint) == {"model", "config"}  # no optimizer state, no training progress
    floats = [t for t in checkpoint["model"].values() if t.is_floating_point()]
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in floats)  # trained channels_last
    images = fer.load_fer2013(checkpoint["config"]["data"])["test"]["images"]
    cpu = torch.device("cpu")
    assert torch.equal(fer.predict_probabilities(fer.load_run(out, cpu)[0], images, cpu),
                       fer.predict_probabilities(fer.load_run(source, cpu)[0], images, cpu))

    card, report = (out / "RELEASE.md").read_text(), json.loads((out / "eval_test.json").read_text())
    assert run.name in card and checkpoint["config"]["git_commit"] in card
    assert f"{report['accuracy']:.2%}" in card
    for emotion, row in report["per_class"].items():
        assert f"| {emotion} | {row['f1']:.3f} |" in card


def test_the_training_command_in_release_md_trains_the_same_run(trained, tmp_path):
    root, run = trained
    card = release.model_card(run, json.loads((run / "config.json").read_text()), {}, fake_report(), 1.0, 0)
    command = next(line for line in card.splitlines() if "training command" in line).split("`")[1]
    words = shlex.split(command)
    assert words[:2] == ["python", "train_baseline.py"]
    result = run_script(words[1], *words[2:], cwd=tmp_path, FER_CACHE=str(root / "cache"),
                        FER_DATA=json.loads((run / "config.json").read_text())["data"])  # the command names no data
    assert result.returncode == 0, result.stderr
    [again] = (tmp_path / "runs").iterdir()
    original, repeated = ({key: value for key, value in json.loads((folder / "config.json").read_text()).items()
                           if key not in {"run_dir", "git_commit", "torch_version"}}  # where and when, not settings
                          for folder in (run, again))
    assert repeated == original


def test_the_training_command_leaves_out_settings_without_a_flag():
    # config.json also records settings built into the code; the command must still parse.
    words = release.training_command({"arch": "vggnet", "epochs": 33, "built_in_setting": 3, "amp": True}).split()
    assert "--built-in-setting" not in words and words[words.index("--amp") + 1] == "on"
    assert train_baseline.parse_args(words[2:]).epochs == 33


def test_the_training_command_of_a_run_older_than_jitter_turns_it_off():
    # Such a run trained without jitter; VGGNet's recipe has it now.
    words = release.training_command({"arch": "vggnet", "epochs": 64}).split()
    assert train_baseline.parse_args(words[2:]).jitter == 0.0
    assert train_baseline.parse_args(["--arch", "vggnet"]).jitter > 0


def fake_report():
    per_class = {name: {"f1": 0.5, "precision": 0.5, "recall": 0.5, "support": 2} for name in fer.EMOTIONS}
    return {"accuracy": 0.5, "accuracy_flip_tta": 0.5, "macro_f1": 0.5, "per_class": per_class}


def test_releasing_again_replaces_the_release_whole(trained, tmp_path):
    root, run = trained
    out = tmp_path / "runs" / "release"
    release.build_release(run, out)
    (out / "gradcam_happy.png").write_bytes(b"left over from the old release")

    # A second run: the same folder with other weights.
    other = shutil.copytree(run, tmp_path / "runs" / "20990101-000000-other")
    checkpoint = torch.load(other / "best.pt", weights_only=True)
    checkpoint["model"] = {name: tensor * 2 if tensor.is_floating_point() else tensor
                           for name, tensor in checkpoint["model"].items()}
    torch.save(checkpoint, other / "best.pt")
    release.build_release(other, out)

    assert {path.name for path in out.iterdir()} == RELEASE_FILES
    assert other.name in (out / "RELEASE.md").read_text()
    assert sorted(path.name for path in out.parent.iterdir()) == sorted(["release", other.name])  # no staging left
    images, cpu = torch.randint(0, 256, (8, 48, 48), dtype=torch.uint8), torch.device("cpu")
    assert torch.equal(fer.predict_probabilities(fer.load_run(out, cpu)[0], images, cpu),
                       fer.predict_probabilities(fer.load_run(other, cpu)[0], images, cpu))


def test_a_run_without_evaluation_or_its_data_is_refused(trained, tmp_path):
    _, run = trained
    source = shutil.copytree(run, tmp_path / run.name, ignore=shutil.ignore_patterns("eval_*", "confusion_*"))
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(dict(config, data=str(tmp_path / "gone"))))
    with pytest.raises(fer.DataError, match="no eval_test.json"):
        release.build_release(source, tmp_path / "release")
    assert not (tmp_path / "release").exists()


def test_gradcam_without_run_uses_the_released_model(trained, tmp_path, monkeypatch, capsys):
    _, run = trained
    face = tmp_path / "face.png"
    Image.new("L", (48, 48), 128).save(face)
    monkeypatch.setattr(fer, "RELEASED_RUN", tmp_path / "release")
    monkeypatch.setattr(sys, "argv", ["gradcam.py", "--image", str(face), "--no-detect",
                                      "--out", str(tmp_path / "cams")])
    with pytest.raises(SystemExit, match="no released model"):
        gradcam.main()
    release.build_release(run, tmp_path / "release")
    gradcam.main()
    assert (tmp_path / "cams" / "gradcam_image_face.png").is_file()
    assert "face.png" in capsys.readouterr().out


def test_the_project_release_if_any_is_small_and_loads():
    if not (fer.RELEASED_RUN / "best.pt").is_file():
        pytest.skip("no runs/release in this copy yet (make release RUN=runs/DIR)")
    assert not (fer.RELEASED_RUN / "last.pt").exists()
    size_mb = sum((fer.RELEASED_RUN / name).stat().st_size for name in RELEASE_FILES) / 1e6
    assert size_mb < 12, f"{fer.RELEASED_RUN} is {size_mb:.1f} MB; it is committed"
    fer.load_run(fer.RELEASED_RUN, torch.device("cpu"))
