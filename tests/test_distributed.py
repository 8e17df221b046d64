"""torchrun: the same loop on several processes (gloo on CPU) takes the steps one process takes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as multiprocessing
import torch.nn as nn

import fer
from conftest import PROJECT_DIR, training_config

# Augmentation off: each process augments its own shard with its own random numbers.
CONFIG = training_config(epochs=1, batch_size=8, flip=False, rotate=0, zoom=0, translate=0)


def free_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def no_dropout_net():
    """Dropout draws other masks for a half batch than for a whole one; this net has none."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 144, 7))


def train_as_rank(rank, world_size, port, data, run_dir, weights_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    fer.init_distributed()
    model = no_dropout_net()
    fer.train(model, data, CONFIG, run_dir)
    if rank == 0:
        torch.save(model.state_dict(), weights_file)


def test_two_processes_with_half_batches_end_with_the_weights_of_one_process(kaggle_folder, tmp_path):
    data = fer.load_fer2013(kaggle_folder)
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    alone = no_dropout_net()
    fer.train(alone, data, CONFIG, tmp_path / "one")
    multiprocessing.spawn(train_as_rank, args=(2, free_port(), data, tmp_path / "two", tmp_path / "two.pt"), nprocs=2)
    together = torch.load(tmp_path / "two.pt", weights_only=True)
    for name, weight in alone.state_dict().items():
        assert torch.allclose(weight, together[name], atol=1e-6), name
    first_update = alone.state_dict()["0.weight"] - no_dropout_net().state_dict()["0.weight"]
    assert first_update.abs().max() > 1e-4  # the comparison is about real steps


def torchrun(*args, cwd):
    environment = dict(os.environ, FER_DIST_TIMEOUT="30", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={free_port()}", str(PROJECT_DIR / "train_baseline.py"), *args],
                            cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_torchrun_writes_exactly_one_run_folder(kaggle_folder, tmp_path):
    launch = torchrun("--data", str(kaggle_folder), "--epochs", "1", "--width", "8", "--batch-size", "8", cwd=tmp_path)
    output, _ = launch.communicate(timeout=300)
    assert launch.returncode == 0, output
    [run_dir] = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["processes"] == 2
    assert {"best.pt", "last.pt", "metrics.jsonl", "curves.png"} <= {p.name for p in run_dir.iterdir()}
    assert output.count("epoch   1/1") == 1  # only rank 0 prints


def children(pid):
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and (p / "stat").exists()
            and (p / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid)]


def test_a_killed_rank_stops_the_run_with_a_message_instead_of_hanging(kaggle_folder, tmp_path):
    launch = torchrun("--data", str(kaggle_folder), "--epochs", "1000", "--width", "8", "--batch-size", "8",
                      cwd=tmp_path)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.2)
    ranks = children(launch.pid)
    assert len(ranks) == 2, "torchrun should have started two workers"
    os.kill(ranks[1], signal.SIGKILL)
    output, _ = launch.communicate(timeout=90)  # hanging would raise TimeoutExpired here
    assert launch.returncode != 0
    assert "exitcode" in output and "-9" in output, output[-2000:]
