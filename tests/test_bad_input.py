"""Bad input, tried as a new user would: each case is one error line naming the file and what was expected.

Damaged or foreign checkpoints, 16-bit images, decompression bombs, capitalised class folders, and the
Makefile evaluating the run its own training wrote."""
import argparse
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import zlib

import numpy as np
import pytest
import torch
import torch.multiprocessing as multiprocessing
from PIL import Image

import fer
import train_baseline
import predict
from conftest import PROJECT_DIR, run_script, training_config, write_kaggle_folder


def assert_one_error_line(result, *expected):
    """The script exited with 1 and said what was wrong in one line, without a traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0]


# -----------------------------------------------------------------------------
# Checkpoints: evaluate.py, gradcam.py and --resume read best.pt / last.pt


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run folder (config.json, best.pt, last.pt) of a tiny baseline trained for one epoch."""
    root = tmp_path_factory.mktemp("finished")
    data_dir = write_kaggle_folder(root / "fer2013")
    config = training_config(epochs=1, data=str(data_dir), name="tiny")
    run_dir = root / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    fer.train(fer.build_model(config), fer.load_fer2013(data_dir, cache_dir=root / "cache"), config, run_dir)
    return run_dir


class RunsCodeWhenLoaded:
    """What a malicious .pt file holds: unpickling it calls os.mkdir(marker) (harmless, and visible)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def malicious(path, marker):
    torch.save({"model": torch.load(path, weights_only=True)["model"], "config": RunsCodeWhenLoaded(marker)}, path)


def truncated(path, marker):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def config_does_not_match_weights(path, marker):
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["width"] = 16  # the weights are of a width-8 network
    torch.save(checkpoint, path)


def missing_keys(path, marker):
    torch.save({"weights": torch.load(path, weights_only=True)["model"]}, path)  # a bare state dict, say


DAMAGE = {malicious: "refused, not loaded: not a plain checkpoint (its pickle holds Python objects",
          truncated: "truncated or damaged",
          config_does_not_match_weights: "size mismatch for features.0.weight",
          missing_keys: "expected model, config, found keys weights"}


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda damage: damage.__name__)
def test_load_run_turns_every_damaged_checkpoint_into_one_data_error(run_copy, tmp_path, damage):
    damage(run_copy / "best.pt", tmp_path / "code-ran")
    with pytest.raises(fer.DataError, match=re.escape(DAMAGE[damage])) as error:
        fer.load_run(run_copy, "cpu")
    assert str(run_copy / "best.pt") in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "code-ran").exists()  # weights_only=True never ran the pickle's code


@pytest.mark.parametrize("content, expected", [(b"", "truncated or damaged (EOFError)"),
                                               (b"not a checkpoint at all", "truncated or damaged")])
def test_empty_and_text_files_are_not_checkpoints(tmp_path, content, expected):
    (tmp_path / "best.pt").write_bytes(content)
    with pytest.raises(fer.DataError, match=re.escape(expected)):
        fer.load_run(tmp_path, "cpu")


def test_a_checkpoint_of_something_else_than_a_dict_says_what_it_found(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "best.pt")
    with pytest.raises(fer.DataError, match="expected model, config, found a list"):
        fer.load_run(tmp_path, "cpu")


@pytest.mark.parametrize("script", ["evaluate.py", "gradcam.py"])
@pytest.mark.parametrize("damage", [malicious, truncated, config_does_not_match_weights],
                         ids=lambda damage: damage.__name__)
def test_scripts_report_a_damaged_checkpoint_in_one_line(run_copy, tmp_path, script, damage):
    damage(run_copy / "best.pt", tmp_path / "code-ran")
    result = run_script(script, "--run", str(run_copy), "--device", "cpu", cwd=tmp_path)
    assert_one_error_line(result, str(run_copy / "best.pt"), DAMAGE[damage])
    assert not (tmp_path / "code-ran").exists()


def test_resume_from_a_truncated_last_checkpoint_is_one_error_line(run_copy, tmp_path):
    truncated(run_copy / "last.pt", None)
    result = run_script("train_baseline.py", "--resume", str(run_copy), cwd=tmp_path)
    assert_one_error_line(result, str(run_copy / "last.pt"), "truncated or damaged")


def test_resume_with_a_config_that_does_not_fit_the_weights_is_one_error_line(run_copy, tmp_path):
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps(dict(config, width=16)))
    result = run_script("train_baseline.py", "--resume", str(run_copy), cwd=tmp_path)
    assert_one_error_line(result, str(run_copy / "last.pt"), "size mismatch for features.0.weight")


def test_resume_from_a_damaged_config_json_is_one_error_line(run_copy, tmp_path):
    (run_copy / "config.json").write_text('{"arch": "baseline", ')
    result = run_script("train_baseline.py", "--resume", str(run_copy), cwd=tmp_path)
    assert_one_error_line(result, str(run_copy / "config.json"), "not the JSON settings")


def test_train_transfer_resume_refuses_a_malicious_last_checkpoint(run_copy, tmp_path):
    config = json.loads((run_copy / "config.json").read_text())
    config.update(arch="mobilenet_v2", mode="finetune", input_size=48, feature_block=None, unfreeze="all",
                  weights="none", weights_path=None, backbone_lr_scale=1.0)
    (run_copy / "config.json").write_text(json.dumps(config))
    malicious(run_copy / "last.pt", tmp_path / "code-ran")
    result = run_script("train_transfer.py", "--resume", str(run_copy), cwd=tmp_path)
    assert_one_error_line(result, str(run_copy / "last.pt"), "refused, not loaded")
    assert not (tmp_path / "code-ran").exists()


def test_train_resumes_from_a_damaged_last_checkpoint_with_a_data_error(finished_run, run_copy):
    truncated(run_copy / "last.pt", None)
    config = json.loads((run_copy / "config.json").read_text())
    data = fer.load_fer2013(config["data"])
    with pytest.raises(fer.DataError, match="truncated or damaged"):
        fer.train(fer.build_model(config), data, config, run_copy)


# -----------------------------------------------------------------------------
# Images: 16-bit gray, decompression bombs


def test_a_mid_gray_16_bit_png_reads_as_mid_gray_not_white(tmp_path):
    Image.fromarray(np.full((48, 48), 128 * 257, dtype=np.uint16)).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    assert fer.prepare_face(predict.open_image(tmp_path / "gray16.png")).unique().tolist() == [128]


def test_a_16_bit_pgm_which_pillow_opens_as_mode_i_is_scaled_too(tmp_path):
    ramp = np.linspace(0, 65535, 48 * 48).reshape(48, 48).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.pgm")
    assert Image.open(tmp_path / "ramp.pgm").mode == "I"
    face = fer.prepare_face(predict.open_image(tmp_path / "ramp.pgm"))
    assert face[0, 0] == 0 and face[-1, -1] == 255 and abs(face.float().mean().item() - 127.5) < 1


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_images_in_0_1_or_0_255_become_the_same_8_bit_gray(scale):
    image = Image.fromarray(np.full((48, 48), 0.5 * scale, dtype=np.float32))
    assert fer.prepare_face(predict.to_8bit_gray(image)).unique().tolist() == [128]


def write_png_bomb(path, side):
    """A valid PNG of side x side black pixels: 388 KB on disk for side 20000, 400 MB once decoded.
    Run-length encoding writes it in about a second; Pillow's own save takes twice as long."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE), bytes(side + 1)  # filter byte + pixels
    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def test_gradcam_refuses_a_decompression_bomb_in_one_line(finished_run, tmp_path):
    bomb = write_png_bomb(tmp_path / "bomb.png", 20000)
    assert bomb.stat().st_size < 1_000_000
    result = run_script("gradcam.py", "--run", str(finished_run), "--image", str(bomb), cwd=tmp_path)
    assert_one_error_line(result, str(bomb), "a decompression bomb?")


@pytest.mark.parametrize("side", [40, 60])  # above Pillow's limit it warns, above twice the limit it refuses
def test_images_above_pillows_pixel_limit_are_a_data_error_whether_it_warns_or_refuses(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the same checks as at 89 million pixels, on small images
    Image.fromarray(np.zeros((side, side), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(fer.DataError, match=r"more than 1,000 pixels, too many to decode safely \(a decompression bomb\?\)"):
        predict.open_image(tmp_path / "big.png")


# -----------------------------------------------------------------------------
# Class folders named Angry/, Happy/, ... as in some copies of FER-2013


def test_capitalised_class_folders_are_read_like_lowercase_ones(tmp_path):
    lower = fer.load_fer2013(write_kaggle_folder(tmp_path / "lower"), cache_dir=tmp_path / "cache")
    root = write_kaggle_folder(tmp_path / "capitalised")
    for class_dir in [*(root / "train").iterdir(), *(root / "test").iterdir()]:
        class_dir.rename(class_dir.with_name(class_dir.name.capitalize()))
    assert (root / "train" / "Happy").is_dir()
    capitalised = fer.load_fer2013(root, cache_dir=tmp_path / "cache")
    for split in ("train", "val", "test"):
        assert torch.equal(capitalised[split]["labels"], lower[split]["labels"])
        assert torch.equal(capitalised[split]["images"], lower[split]["images"])


def test_an_unknown_class_folder_is_still_an_error(kaggle_folder):
    (kaggle_folder / "train" / "happy").rename(kaggle_folder / "train" / "Happiness")
    with pytest.raises(fer.DataError, match="unknown class folder 'Happiness'; expected one of angry, disgust"):
        fer.load_fer2013(kaggle_folder)


# -----------------------------------------------------------------------------
# --run-dir, and each make target evaluating the run its own training wrote


def test_run_dir_creates_exactly_that_folder_and_refuses_an_existing_one(tmp_path):
    folder = tmp_path / "runs" / "mine"
    assert train_baseline.make_run_dir({"name": "x", "run_dir": str(folder)}) == folder
    assert json.loads((folder / "config.json").read_text())["run_dir"] == str(folder)
    with pytest.raises(fer.DataError, match=f"{re.escape(str(folder))}: already exists; --run-dir expects a new folder"):
        train_baseline.make_run_dir({"name": "x", "run_dir": str(folder)})


def test_resume_and_run_dir_together_are_an_error(finished_run):
    parser = argparse.ArgumentParser()
    train_baseline.add_training_arguments(parser, epochs=1, batch_size=8)
    args = parser.parse_args(["--resume", str(finished_run), "--run-dir", "elsewhere"])
    with pytest.raises(fer.DataError, match="leave out --run-dir"):
        train_baseline.resolve_config(args, arch="baseline")


def test_amp_auto_is_bf16_only_where_the_cpu_has_it_and_a_resumed_bf16_run_warns_elsewhere(finished_run, tmp_path,
                                                                                        monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    train_baseline.add_training_arguments(parser, epochs=1, batch_size=8)
    for native in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        config, _ = train_baseline.resolve_config(parser.parse_args(["--device", "cpu"]), arch="baseline")
        assert config["amp"] is native
    # A run started in bf16 elsewhere keeps its own settings when resumed here, and says what that costs.
    run_dir = tmp_path / "started_in_bf16"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "config.json").write_text(json.dumps(dict(json.loads((run_dir / "config.json").read_text()), amp=True)))
    config, _ = train_baseline.resolve_config(parser.parse_args(["--resume", str(run_dir), "--device", "cpu"]), arch="baseline")
    assert config["amp"] is True
    assert f"warning: {run_dir} trains in bfloat16, which cpu here only emulates" in capsys.readouterr().out


def make_run_dir_as_rank(rank, port, folder, outcomes):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    fer.init_distributed()
    for attempt in range(2):
        try:
            outcomes.put((rank, attempt, str(train_baseline.make_run_dir({"name": "x", "run_dir": str(folder)}))))
        except fer.DataError as error:
            outcomes.put((rank, attempt, f"DataError: {error}"))


def test_under_torchrun_every_process_gets_the_run_dir_or_the_error(tmp_path):
    from test_distributed import free_port

    outcomes = multiprocessing.get_context("spawn").SimpleQueue()
    multiprocessing.spawn(make_run_dir_as_rank, args=(free_port(), tmp_path / "runs" / "mine", outcomes), nprocs=2)
    results = sorted(outcomes.get() for _ in range(4))
    folder = str(tmp_path / "runs" / "mine")
    assert [result for _, attempt, result in results if attempt == 0] == [folder, folder]
    assert all(result.startswith(f"DataError: {folder}: already exists") for _, attempt, result in results if attempt == 1)


def test_train_baseline_writes_into_run_dir_and_refuses_it_a_second_time(kaggle_folder, tmp_path):
    arguments = ["--data", str(kaggle_folder), "--epochs", "1", "--batch-size", "8", "--width", "8", "--device", "cpu",
                 "--run-dir", "runs/exactly-here"]
    result = run_script("train_baseline.py", *arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [folder.name for folder in (tmp_path / "runs").iterdir()] == ["exactly-here"]
    assert (tmp_path / "runs" / "exactly-here" / "best.pt").is_file()
    assert_one_error_line(run_script("train_baseline.py", *arguments, cwd=tmp_path), "runs/exactly-here: already exists")


def training_targets():
    """The Makefile's targets whose recipe runs a train_*.py script."""
    targets, current = [], None
    for line in (PROJECT_DIR / "Makefile").read_text().splitlines():
        if match := re.match(r"([a-z][a-z0-9-]*):", line):
            current = match[1]
        elif line.startswith("\t") and re.search(r"train_\w+\.py", line) and current not in targets:
            targets.append(current)
    return targets


def test_the_makefile_has_the_training_targets_this_test_expects():
    assert {"baseline", "baseline-seed", "feature-extract", "finetune"} <= set(training_targets())


@pytest.mark.parametrize("target", training_targets())
def test_each_training_target_evaluates_the_folder_its_own_training_wrote(target, tmp_path):
    # PYTHON and TRAIN replaced by a script that only logs its arguments: the recipe's shell runs for
    # real, and nothing trains. -o: never rebuild .venv, even if requirements.txt is newer.
    log, fake_python = tmp_path / "log", tmp_path / "fake-python"
    fake_python.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
    result = subprocess.run(["make", "-s", "-o", ".venv/installed", target, f"PYTHON={fake_python}",
                             f"TRAIN={fake_python}", "EPOCHS=1"], cwd=PROJECT_DIR, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    commands = log.read_text().splitlines()
    # One run per training, evaluated right after it (make transfer-curve trains many, in turn).
    trained = [re.search(r"--run-dir (\S+)", line)[1] for line in commands if re.match(r"train_\w+\.py", line)]
    evaluated = [re.search(r"--run (\S+)", line)[1] for line in commands if line.startswith("evaluate.py")]
    assert trained == evaluated and len(set(trained)) == len(trained) >= 1
    assert all(re.fullmatch(r"runs/\d{8}-\d{6}-[\w.-]+", run) for run in trained)


def test_under_torchrun_the_make_target_passes_the_same_run_dir_to_every_process():
    result = subprocess.run(["make", "-n", "-o", ".venv/installed", "baseline", "NPROC=2"], cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=60)
    assert re.search(r'torchrun --nproc_per_node=2 train_baseline.py --run-dir "\$run"', result.stdout)
    assert 'evaluate.py --run "$run"' in result.stdout


# -----------------------------------------------------------------------------
# Devices and refused checkpoints: every tool says what is wrong in one line


def test_device_cuda_without_a_gpu_is_a_data_error_that_says_to_use_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(fer.DataError, match=re.escape("--device cuda: no CUDA GPU is available here; use --device cpu")):
        fer.pick_device("cuda")
    assert fer.pick_device("cpu") == fer.pick_device() == torch.device("cpu")


def test_a_device_name_torch_does_not_know_is_a_data_error():
    with pytest.raises(fer.DataError, match="--device gpu: not a device; use cpu, cuda or cuda:N"):
        fer.pick_device("gpu")


@pytest.mark.parametrize("script, arguments, status", [("evaluate.py", ["--run", "RUN"], 1),
                                                       ("gradcam.py", ["--run", "RUN"], 1),
                                                       ("choose_ensemble.py", ["RUN"], 1),
                                                       ("predict.py", ["--run", "RUN", "face.png"], 2)])
def test_scripts_say_device_cuda_needs_a_gpu_in_one_line(finished_run, tmp_path, script, arguments, status):
    arguments = [str(finished_run) if argument == "RUN" else argument for argument in arguments]
    # CUDA_VISIBLE_DEVICES="" hides every GPU: this machine has none to offer, whatever it holds.
    result = run_script(script, *arguments, "--device", "cuda", cwd=tmp_path, CUDA_VISIBLE_DEVICES="")
    assert result.stderr == "error: --device cuda: no CUDA GPU is available here; use --device cpu\n"
    assert result.returncode == status  # predict.py: 2, a command that cannot work as given


@pytest.mark.parametrize("protocol", range(6))  # every pickle protocol there is, 0 to 5
def test_a_checkpoint_that_would_run_code_is_refused_by_name_in_any_pickle_protocol(run_copy, tmp_path, protocol):
    checkpoint = torch.load(run_copy / "best.pt", weights_only=True)
    checkpoint["config"] = RunsCodeWhenLoaded(tmp_path / "code-ran")
    torch.save(checkpoint, run_copy / "best.pt", pickle_protocol=protocol)
    with pytest.raises(fer.DataError, match="refused, not loaded: not a plain checkpoint") as error:
        fer.load_run(run_copy, "cpu")
    assert "damaged" not in str(error.value)
    assert not (tmp_path / "code-ran").exists()
