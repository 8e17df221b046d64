"""Fuzzing the readers with random bytes, files cut short anywhere, and bytes changed at random; and
predict.py's command line with random options, paths and damaged files together.

Whatever the damage, a reader either returns what it promises (a cut can leave a valid file, and a
changed pixel value is still a picture) or raises fer.DataError naming the file: never another
exception, which a script would print as a traceback. Seeded, so a failure repeats."""
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fer
from conftest import face_like, training_config, write_kaggle_folder

SEED = 0


def damaged_copies(good, count, rng):
    """`count` damaged copies of the bytes `good`: cut at a random offset, up to 8 bytes changed (to
    anything, or digits to other digits), a few bytes that break parsers inserted, or random bytes."""
    for _ in range(count):
        data, kind = bytearray(good), rng.choice(["cut", "change", "digits", "insert", "random"])
        if kind == "cut":
            del data[rng.randrange(len(data)):]
        elif kind == "change":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == "digits":  # in a CSV: other numbers, some of them out of range (256, 999)
            digits = [position for position, byte in enumerate(data) if chr(byte).isdigit()] or [0]
            for position in rng.sample(digits, min(len(digits), rng.randint(1, 8))):
                data[position] = ord(rng.choice("0123456789"))
        elif kind == "insert":
            position = rng.randrange(len(data) + 1)
            data[position:position] = rng.choice([b"\x00", b'"', b"\r", b"\n", b",", b"-1", b"256", b"\xff\xfe",
                                                  b"\xef\xbb\xbf", rng.randbytes(rng.randint(1, 16))])
        else:
            data = rng.randbytes(rng.randint(0, 400))
        yield bytes(data)


def read_or_data_error(read, path):
    """read(path), or None if it raised a DataError that names the file in one line."""
    try:
        return read(path)
    except fer.DataError as error:
        assert str(path) in str(error) and "\n" not in str(error), str(error)
        return None


def encoded(image, format, **options):
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


FACE = Image.fromarray(face_like(3, np.random.default_rng(SEED)))
IMAGE_FILES = {
    "png": encoded(FACE, "PNG"),
    "jpg": encoded(FACE, "JPEG", quality=90),
    "progressive.jpg": encoded(FACE.convert("RGB"), "JPEG", progressive=True),
    "16bit.png": encoded(Image.fromarray(np.asarray(FACE).astype(np.uint16) * 257), "PNG"),
    "bmp": encoded(FACE, "BMP"),
    "gif": encoded(FACE, "GIF"),
    "tiff": encoded(FACE, "TIFF"),
    "webp": encoded(FACE, "WEBP"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the EXIF of damaged TIFFs, then reads on
@pytest.mark.parametrize("suffix", IMAGE_FILES)
def test_read_image_of_damaged_files_returns_a_face_or_raises_data_error(tmp_path, suffix):
    rng = random.Random(f"{SEED}-{suffix}")
    path = tmp_path / f"face.{suffix}"
    for data in damaged_copies(IMAGE_FILES[suffix], 60, rng):
        path.write_bytes(data)
        face = read_or_data_error(fer.read_image, path)
        if face is not None:  # PNG's checksums catch nearly every change; a JPEG decodes many to other pixels
            assert face.dtype == torch.uint8 and face.shape == (48, 48)


def small_fer2013_csv(rng):
    """A valid fer2013.csv with one row per split (the reader needs all three)."""
    rows = ["emotion,pixels,Usage"] + [f"{label},{' '.join(str(rng.randrange(256)) for _ in range(48 * 48))},{usage}"
                                       for label, usage in enumerate(fer.USAGE_TO_SPLIT)]
    return ("\n".join(rows) + "\n").encode()


def test_read_fer2013_csv_of_damaged_files_returns_splits_or_raises_data_error(tmp_path):
    rng, outcomes = random.Random(SEED), set()
    path = tmp_path / "fer2013.csv"
    for data in damaged_copies(small_fer2013_csv(rng), 300, rng):
        path.write_bytes(data)
        splits = read_or_data_error(fer.read_fer2013_csv, path)
        if splits is not None:
            for split in ("train", "val", "test"):
                assert splits[split]["images"].dtype == torch.uint8 and splits[split]["images"].shape[1:] == (48, 48)
                assert 0 <= splits[split]["labels"].min() <= splits[split]["labels"].max() < len(fer.EMOTIONS)
        outcomes.add(splits is None)
    assert outcomes == {True, False}  # the damage was varied enough to give both outcomes


def test_load_fer2013_of_a_folder_with_one_damaged_image_loads_or_raises_data_error(tmp_path):
    rng, outcomes = random.Random(SEED), set()
    root = write_kaggle_folder(tmp_path / "fer2013", per_usage={"Training": 1, "PublicTest": 1, "PrivateTest": 1})
    images = sorted(root.rglob("*.png"))
    for case, data in enumerate(damaged_copies(IMAGE_FILES["png"], 20, rng)):
        victim = rng.choice(images)
        victim.write_bytes(data)
        error_or_data = read_or_data_error(lambda root: fer.load_fer2013(root, cache_dir=tmp_path / f"cache{case}"), root)
        outcomes.add(error_or_data is None)
        victim.write_bytes(IMAGE_FILES["png"])
    assert True in outcomes


def test_load_run_of_damaged_checkpoints_returns_a_model_or_raises_data_error(tmp_path):
    rng, outcomes = random.Random(SEED), set()
    config = training_config(width=4)
    buffer = io.BytesIO()
    torch.save({"model": fer.build_model(config).state_dict(), "config": config}, buffer)
    for data in damaged_copies(buffer.getvalue(), 60, rng):
        (tmp_path / "best.pt").write_bytes(data)
        outcomes.add(read_or_data_error(lambda run_dir: fer.load_run(run_dir, "cpu"), tmp_path) is None)
    assert outcomes == {True, False}


# -----------------------------------------------------------------------------
# predict.py's command line: random flags, paths and files together


def write_inputs(folder, rng):
    """Files and folders for predict.py to be given, good and bad, under `folder`:
    {name: (path, how)} with how "good", "maybe" (damaged: may still decode) or "bad" (cannot be read)."""
    folder.mkdir()
    inputs = {}
    for index in range(3):
        path = folder / f"good{index}.png"
        path.write_bytes(IMAGE_FILES["png"])
        inputs[path.name] = (path, "good")
    for index, data in enumerate(damaged_copies(IMAGE_FILES[rng.choice(list(IMAGE_FILES))], 3, rng)):
        path = folder / f"damaged{index}.{rng.choice(['png', 'jpg', 'webp', 'gif'])}"
        path.write_bytes(data)
        inputs[path.name] = (path, "maybe")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not a picture")
    inputs.update({"empty.jpg": (folder / "empty.jpg", "bad"), "notes.png": (folder / "notes.png", "bad"),
                   "missing.jpg": (folder / "missing.jpg", "bad")})
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.jpg")  # would block whoever opens it to read
        inputs["pipe.jpg"] = (folder / "pipe.jpg", "bad")
    (folder / "nothing").mkdir()
    (folder / "nothing" / "readme.txt").write_text("no pictures here")
    inputs["nothing"] = (folder / "nothing", "bad")
    (folder / "album" / "2024").mkdir(parents=True)
    (folder / "album" / "2024" / "face.webp").write_bytes(IMAGE_FILES["webp"])
    (folder / "album" / "face.emotions.png").write_bytes(IMAGE_FILES["png"])  # an annotated copy: never read
    inputs["album"] = (folder / "album", "good")
    (folder / "video.mp4").write_bytes(rng.randbytes(300))
    inputs["video.mp4"] = (folder / "video.mp4", "bad")
    return inputs


def random_command(rng, folder, inputs):
    """A random predict.py command line: some of `inputs` (some twice), and random options, some wrong."""
    chosen = rng.sample(sorted(inputs), rng.randint(1, 5))
    chosen += rng.sample(chosen, rng.randint(0, 1))  # a path named twice
    argv = ["--no-detect"] if rng.random() < 0.7 else []
    for option, values in (("--tta", None), ("--amp", ["off", "on", "auto", "fast"]), ("--every", ["1", "3", "0"]),
                           ("--smooth", ["2", "-1"]), ("--out", ["out", "album", "good0.png"]),
                           ("--csv", ["faces.csv", "good1.png", "faces.jpg"]), ("--plot", ["plot.png", "plot.txt"]),
                           ("--frobnicate", None)):
        if rng.random() < (0.05 if option == "--frobnicate" else 0.25):
            argv += [option] if values is None else [option, str(folder / rng.choice(values))
                                                     if option in ("--out", "--csv", "--plot") else rng.choice(values)]
    return argv + [str(inputs[name][0]) for name in chosen], [inputs[name] for name in chosen]


def snapshot(folder, skip):
    """{path: (size, modification time, bytes)} of every file under `folder`, but those under a path in `skip`."""
    return {path: (path.stat().st_size, path.stat().st_mtime_ns, path.read_bytes() if path.is_file() else None)
            for path in folder.rglob("*")
            if not any(path == other or other in path.parents for other in skip) and not path.is_fifo()}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the EXIF of damaged TIFFs, then reads on
def test_predict_command_lines_of_random_options_and_damaged_files_give_one_error_line_per_bad_input(tmp_path,
                                                                                                      capsys):
    import predict

    rng = random.Random(SEED)
    config = training_config(width=4)
    (tmp_path / "run").mkdir()
    torch.save({"model": fer.build_model(config).state_dict(), "config": config}, tmp_path / "run" / "best.pt")
    inputs = write_inputs(tmp_path / "files", rng)
    statuses = set()
    for case in range(40):
        argv, chosen = random_command(rng, tmp_path / "files", inputs)
        outputs = [Path(argv[i + 1]) for i, option in enumerate(argv) if option in ("--out", "--csv", "--plot")]
        before = snapshot(tmp_path / "files", outputs)
        try:
            predict.main(["--run", str(tmp_path / "run"), *argv])
            status = 0
        except SystemExit as exit_info:
            status = exit_info.code if isinstance(exit_info.code, int) else 1
        out, err = capsys.readouterr()
        command = f"case {case}: predict.py {' '.join(argv)}\n{err}"
        statuses.add(status)
        assert status in (0, 1, 2), command
        assert all(json.loads(line) for line in out.splitlines()), command
        assert snapshot(tmp_path / "files", outputs) == before, command  # nothing outside the outputs asked for
        errors = [line for line in err.splitlines() if "error:" in line]
        if status == 2:  # the command itself cannot work: one line says why, nothing is read
            assert len(errors) == 1 and out == "", command
            continue
        named = [path for path, _ in chosen]
        assert len(errors) == len(set(errors)), command  # one line per bad input, even one named twice
        for path, how in chosen:  # a damaged file ("maybe") can still decode
            lines = [line for line in errors if line.startswith(f"error: {path}: ")]
            assert len(lines) in {"bad": [1], "good": [0], "maybe": [0, 1]}[how], command
        assert all(any(line.startswith(f"error: {path}") for path in named) for line in errors), command
        assert status == (1 if errors else 0), command
    assert statuses == {0, 1, 2}  # the cases were varied enough to give every outcome
