"""The training loop: resumable, stops on NaN, and writes complete run folders."""
import json

import pytest
import torch
import torch.nn as nn

import fer
import train_baseline
from conftest import run_script, training_config


def small_data(kaggle_folder):
    return fer.load_fer2013(kaggle_folder)


def test_interrupted_and_resumed_run_ends_with_the_same_weights(kaggle_folder, tmp_path, monkeypatch):
    data = small_data(kaggle_folder)
    config = training_config(epochs=3)
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight_dir.mkdir(), resumed_dir.mkdir()
    torch.manual_seed(0)
    straight = fer.build_model(config)
    fer.train(straight, data, config, straight_dir)

    real_epoch, calls = fer.train_one_epoch, []

    def interrupt_in_epoch_two(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does
        return real_epoch(*args)

    with monkeypatch.context() as patch:
        patch.setattr(fer, "train_one_epoch", interrupt_in_epoch_two)
        torch.manual_seed(0)
        progress = fer.train(fer.build_model(config), data, config, resumed_dir)
    assert progress["interrupted"] and progress["epoch"] == 1
    resumed = fer.build_model(config)  # fresh initial weights: everything must come from last.pt
    progress = fer.train(resumed, data, config, resumed_dir)
    assert progress["epoch"] == 3 and len(progress["history"]) == 3
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_nan_loss_stops_the_run_with_a_message(kaggle_folder, tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, 7))
    nn.init.constant_(model[1].weight, float("nan"))
    with pytest.raises(FloatingPointError, match="lower --lr"):
        fer.train(model, small_data(kaggle_folder), training_config(), tmp_path)


def test_plateau_schedule_halves_the_rate_when_validation_stalls():
    config = training_config(schedule="plateau", lr=0.1)
    assert fer.learning_rate(config, step=10, total_steps=100, plateau_factor=0.25) == pytest.approx(0.025)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = training_config(lr=1.0, warmup=0.1)
    rates = [fer.learning_rate(config, step, 100, 1.0) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and max(rates) == pytest.approx(1.0) == rates[9]
    assert rates[-1] < 0.001 and all(a >= b for a, b in zip(rates[9:], rates[10:]))


def test_each_architecture_takes_its_own_recipe_and_the_command_line_overrides_it():
    vggnet = train_baseline.parse_args(["--arch", "vggnet"])
    assert (vggnet.optimizer, vggnet.lr, vggnet.epochs, vggnet.ema, vggnet.jitter) == ("sgd", 0.1, 64, 0.999, 0.2)
    changed = train_baseline.parse_args(["--arch", "vggnet", "--lr", "0.05", "--jitter", "0"])
    assert (changed.lr, changed.jitter, changed.epochs) == (0.05, 0.0, 64)
    baseline = train_baseline.parse_args([])
    assert (baseline.optimizer, baseline.lr, baseline.epochs, baseline.ema, baseline.jitter) == (
        "adamw", 2e-3, 80, 0.0, 0.0)


def test_settings_without_a_flag_are_recorded_in_the_config():
    args = vars(train_baseline.parse_args(["--arch", "vggnet"]))
    assert {key: args[key] for key in train_baseline.FIXED_SETTINGS} == train_baseline.FIXED_SETTINGS
    assert args["warmup"] == train_baseline.RECIPES["vggnet"]["warmup"]


def test_train_baseline_writes_a_complete_run_folder_that_evaluate_reads(kaggle_folder, tmp_path):
    result = run_script("train_baseline.py", "--data", str(kaggle_folder), "--epochs", "1", "--batch-size", "8",
                        "--width", "8", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "runs").iterdir()
    assert {"config.json", "metrics.jsonl", "curves.png", "best.pt", "last.pt"} <= {p.name for p in run_dir.iterdir()}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == "baseline" and config["width"] == 8 and config["device"] == "cpu"
    assert {"torch_version", "git_commit", "amp", "lr"} <= set(config)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    for checkpoint in ("best.pt", "last.pt"):
        assert "model" in torch.load(run_dir / checkpoint, weights_only=True)

    result = run_script("evaluate.py", "--run", str(run_dir), cwd=tmp_path, FER_DATA=str(kaggle_folder))
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir / "eval_test.json").read_text())
    assert report["split"] == "PrivateTest" and report["images"] == 14
    assert {"accuracy", "macro_f1", "accuracy_flip_tta", "accuracy_without_train_duplicates"} <= set(report)
    assert (run_dir / "confusion_test.png").stat().st_size > 0


@pytest.mark.parametrize("script, args", [("train_baseline.py", ["--data", "{tmp}/missing"]),
                                          ("train_baseline.py", ["--resume", "{tmp}"]),
                                          ("evaluate.py", ["--run", "{tmp}"])])
def test_scripts_report_bad_input_in_one_line_without_a_traceback(tmp_path, script, args):
    result = run_script(script, *[arg.format(tmp=tmp_path) for arg in args], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and str(tmp_path) in result.stderr


def test_two_runs_of_the_same_name_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(fer.time, "strftime", lambda format: "20260101-000000")
    folders = [train_baseline.make_run_dir({"name": "twin", "run_dir": None}, runs_dir=tmp_path) for _ in range(3)]
    assert [folder.name for folder in folders] == ["20260101-000000-twin", "20260101-000000-twin-2",
                                                   "20260101-000000-twin-3"]
    assert all(json.loads((folder / "config.json").read_text())["run_dir"] == str(folder) for folder in folders)


def folder_contents(folder):
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("kept, message", [(["best.pt"], "a finished model (best.pt)"), ([], "no finished epoch")])
def test_resume_refuses_a_run_without_training_state_and_changes_nothing(tmp_path, kept, message):
    # A released model is best.pt without last.pt: resuming it would train from epoch 1 and overwrite best.pt.
    run = tmp_path / "release-copy"
    run.mkdir()
    for name in ["config.json", "metrics.jsonl", "eval_test.json"] + kept:
        (run / name).write_bytes((fer.RELEASED_RUN / name).read_bytes())
    before = folder_contents(tmp_path)
    result = run_script("train_baseline.py", "--resume", str(run), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {run}: nothing to resume") and message in line
    assert folder_contents(tmp_path) == before  # no file written, changed or added
