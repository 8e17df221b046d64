"""predict.py: the same preprocessing and probabilities as training and evaluation, faces found in photos,
and one clear message per bad input."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fer
import predict
from conftest import face_like, training_config

REAL_DATA = os.environ.get("FER_DATA")
CPU = torch.device("cpu")


@pytest.fixture
def run_dir(tmp_path):
    """A run folder holding best.pt the way fer.train writes it, from a small seeded model."""
    torch.manual_seed(0)
    config = training_config()
    model = fer.build_model(config)
    # A freshly initialised network gives every class about 1/7; scaled-up logits make its probabilities
    # depend strongly on the input, so any difference in preprocessing would show.
    model.classifier[-1].weight.data *= 50
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"model": model.state_dict(), "config": config}, run_dir / "best.pt")
    return run_dir


def write_crops(folder, count=4):
    rng = np.random.default_rng(0)
    paths = [folder / f"face{label}.png" for label in range(count)]
    for label, path in enumerate(paths):
        Image.fromarray(face_like(label, rng)).save(path)
    return paths


def run_predict(capsys, *argv):
    """predict.py's main in this process: (exit status, the JSON lines of stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    status = exit_info.value.code
    if isinstance(status, str):  # sys.exit("error: ...") prints its message and exits with 1
        status, err = 1, err + status
    return status, [json.loads(line) for line in out.splitlines()], err


def probabilities_of(face):
    return [face["probabilities"][name] for name in fer.EMOTIONS]


@pytest.mark.parametrize("tta", [False, True])
def test_no_detect_gives_the_probabilities_evaluation_gives_for_the_same_images(tmp_path, run_dir, capsys, tta):
    paths = write_crops(tmp_path)
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", *(["--tta"] if tta else []), *paths)
    model, _ = fer.load_run(run_dir, CPU)
    images = torch.stack([fer.read_image(path) for path in paths])  # what training and evaluate.py read
    expected = fer.predict_probabilities(model, images, CPU, tta=tta)
    assert status == 0
    assert [face["image"] for face in faces] == [str(path) for path in paths]
    assert [face["box"] for face in faces] == [[0, 0, 48, 48]] * len(paths)
    assert torch.tensor([probabilities_of(face) for face in faces]) == pytest.approx(expected, abs=1e-4)
    assert [face["emotion"] for face in faces] == [fer.EMOTIONS[i] for i in expected.argmax(1)]
    assert (expected - expected.mean(0)).abs().max() > 0.1  # they depend on the input: the comparison is not vacuous
    assert all((tmp_path / f"{path.stem}.emotions.png").is_file() for path in paths)


def test_a_large_non_square_colour_photo_is_prepared_exactly_like_the_training_images(tmp_path, run_dir, capsys):
    rng = np.random.default_rng(1)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, size=(150, 230, 3), dtype=np.uint8)).save(path)

    prepared = predict.crop_faces(predict.open_image(path), [[0, 0, 230, 150]])[0]
    by_hand = Image.open(path).convert("L").crop((40, 0, 190, 150)).resize((48, 48), Image.BILINEAR)
    assert torch.equal(prepared, fer.read_image(path))
    assert torch.equal(prepared, torch.from_numpy(np.asarray(by_hand).copy()))

    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--out", tmp_path / "annotated", path)
    expected = fer.predict_probabilities(fer.load_run(run_dir, CPU)[0], prepared[None], CPU)
    assert status == 0 and faces[0]["box"] == [0, 0, 230, 150]
    assert torch.tensor([probabilities_of(faces[0])]) == pytest.approx(expected, abs=1e-4)
    assert (tmp_path / "annotated" / "photo.emotions.png").is_file()


def test_each_bad_image_gets_one_message_and_the_others_are_still_classified(tmp_path, run_dir, capsys):
    good = write_crops(tmp_path, count=2)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("these are not pixels")
    missing = tmp_path / "missing.png"
    status, faces, err = run_predict(capsys, "--run", run_dir, "--no-detect", good[0], missing, not_an_image, good[1])
    assert status == 1
    assert [face["image"] for face in faces] == [str(good[0]), str(good[1])]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {missing}: no such file", errors[1]]
    assert errors[1].startswith(f"error: {not_an_image}: cannot decode this file as an image")


def test_a_run_folder_without_a_checkpoint_is_named_in_the_message(tmp_path, capsys):
    status, faces, err = run_predict(capsys, "--run", tmp_path, "--no-detect", *write_crops(tmp_path, count=1))
    assert status == 1 and faces == []
    assert f"error: {tmp_path / 'best.pt'}: no checkpoint" in err


def test_without_opencv_detection_says_how_to_install_it_and_no_detect_still_works(tmp_path, run_dir, capsys,
                                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    crop = write_crops(tmp_path, count=1)
    status, faces, err = run_predict(capsys, "--run", run_dir, crop[0])
    assert status == 1 and faces == [] and "make install-predict" in err
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", crop[0])
    assert status == 0 and len(faces) == 1


def test_a_picture_with_no_face_is_reported(tmp_path, run_dir, capsys):
    pytest.importorskip("cv2", reason="face detection needs OpenCV: make install-predict")
    blank = tmp_path / "wall.png"
    Image.new("RGB", (320, 240), (180, 170, 160)).save(blank)
    status, faces, err = run_predict(capsys, "--run", run_dir, blank)
    assert status == 1 and faces == []
    assert f"error: {blank}: no face found" in err


# A clear frontal PrivateTest face that OpenCV's Haar cascade finds when enlarged to 200x200.
REAL_FACE = "test/happy/PrivateTest_10077120.jpg"


@pytest.mark.skipif(not REAL_DATA or not (Path(REAL_DATA) / REAL_FACE).is_file(), reason="FER_DATA names no real copy")
def test_the_detector_finds_a_real_face_pasted_into_a_larger_picture(tmp_path, run_dir, capsys):
    pytest.importorskip("cv2", reason="face detection needs OpenCV: make install-predict")
    face = Image.open(Path(REAL_DATA) / REAL_FACE).resize((200, 200), Image.BILINEAR)
    picture = Image.new("RGB", (640, 480), (90, 120, 150))
    picture.paste(face.convert("RGB"), (300, 150))
    path = tmp_path / "picture.jpg"
    picture.save(path)

    status, faces, _ = run_predict(capsys, "--run", run_dir, path)
    assert status == 0 and len(faces) == 1
    left, top, width, height = faces[0]["box"]
    assert abs(left + width / 2 - 400) < 20 and abs(top + height / 2 - 250) < 20  # centred on the pasted face
    assert 160 <= width <= 240 and 160 <= height <= 240
    assert (tmp_path / "picture.emotions.png").is_file()
