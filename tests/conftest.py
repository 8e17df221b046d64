"""Synthetic FER-2013 look-alikes, written into tmp_path by the tests that need them."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The tests' models are tiny: one thread each is as fast, and several test processes (the scripts
# run as subprocesses inherit this) never oversubscribe a 2-core machine that also trains a model.
os.environ.setdefault("OMP_NUM_THREADS", "1")
PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR))

import fer  # noqa: E402

USAGES = ("Training", "PublicTest", "PrivateTest")


def face_like(label, rng, size=48):
    """A noisy image whose brightness depends on the label, so a model can learn it."""
    pixels = rng.normal(30 + 30 * label, 20, size=(size, size))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_kaggle_folder(root, per_usage=None, prefixed=True, seed=0):
    """ROOT/{train,test}/<emotion>/<Usage>_<id>.png, like Kaggle's msambare/fer2013."""
    per_usage = per_usage or {"Training": 6, "PublicTest": 2, "PrivateTest": 2}
    rng = np.random.default_rng(seed)
    for usage, count in per_usage.items():
        folder = "train" if usage == "Training" else "test"
        for label, emotion in enumerate(fer.EMOTIONS):
            (root / folder / emotion).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                name = f"{usage}_{label}{index:04d}.png" if prefixed else f"{usage.lower()}{label}{index:04d}.png"
                Image.fromarray(face_like(label, rng)).save(root / folder / emotion / name)
    return root


def write_fer2013_csv(path, per_usage=None, seed=0):
    per_usage = per_usage or {"Training": 6, "PublicTest": 2, "PrivateTest": 2}
    rng = np.random.default_rng(seed)
    rows = ["emotion,pixels,Usage"]
    for usage, count in per_usage.items():
        for label in range(len(fer.EMOTIONS)):
            for _ in range(count):
                rows.append(f"{label},{' '.join(map(str, face_like(label, rng).flatten()))},{usage}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test decodes into its own cache folder, never the project's data/cache."""
    monkeypatch.setattr(fer, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setenv("FER_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def kaggle_folder(tmp_path):
    return write_kaggle_folder(tmp_path / "fer2013")


def run_script(script, *args, cwd, **environment):
    """Run one of the project's scripts as a user would, from `cwd`."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **environment)
    return subprocess.run([sys.executable, str(PROJECT_DIR / script), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def training_config(**overrides):
    """A complete config for fer.train, small enough for a test."""
    config = dict(arch="baseline", width=8, epochs=2, batch_size=16, optimizer="adamw", lr=1e-3,
                  weight_decay=0.0, schedule="cosine", warmup=0.1, plateau_patience=5, early_stop=0,
                  label_smoothing=0.0, ema=0.0, jitter=0.0, flip=True, rotate=10.0, zoom=0.1, translate=0.1,
                  amp=False, seed=0, device="cpu", train_fraction=1.0, labels="fer2013")
    config.update(overrides)
    return config
