"""predict.py: the same preprocessing and probabilities as training and evaluation, faces found in photos
and videos, folders searched without reading back predict.py's own output, and one clear message per bad input."""
import builtins
import csv
import errno
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import fer
import predict
from conftest import PROJECT_DIR, face_like, run_script, training_config

CPU = torch.device("cpu")
# A real photo (NASA, public domain) the repository ships for its README; OpenCV's Haar cascade finds her face.
ASTRONAUT = PROJECT_DIR / "docs" / "astronaut.jpg"


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


def write_crops(folder, count=4, prefix="face"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"{prefix}{label}.png" for label in range(count)]
    for label, path in enumerate(paths):
        Image.fromarray(face_like(label, rng)).save(path)
    return paths


def write_video(path, frames, fps=10):
    """An MJPG .avi of `frames` (uint8 arrays, gray [H, W] or RGB [H, W, 3]), written by OpenCV."""
    cv2 = pytest.importorskip("cv2", reason="videos need OpenCV: make install-predict")
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR if frame.ndim == 2 else cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_video(path):
    """Every frame of a video as an RGB PIL image, decoded the way predict.py decodes it."""
    import cv2

    video, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = video.read()
        if not ok:
            return frames
        frames.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))


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


def files_under(folder):
    return sorted(path for path in folder.rglob("*") if path.is_file())


# -----------------------------------------------------------------------------
# Photos: the same probabilities as evaluation, nothing written unless asked


@pytest.mark.parametrize("tta", [False, True])
def test_no_detect_gives_the_probabilities_evaluation_gives_for_the_same_images(tmp_path, run_dir, capsys, tta):
    paths = write_crops(tmp_path / "crops")
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--amp", "off",
                                   *(["--tta"] if tta else []), *paths)
    model, _ = fer.load_run(run_dir, CPU)
    images = torch.stack([fer.read_image(path) for path in paths])  # what training and evaluate.py read
    expected = fer.predict_probabilities(model, images, CPU, tta=tta)
    assert status == 0
    assert [face["image"] for face in faces] == [str(path) for path in paths]
    assert [face["box"] for face in faces] == [[0, 0, 48, 48]] * len(paths)
    assert torch.tensor([probabilities_of(face) for face in faces]) == pytest.approx(expected, abs=1e-4)
    assert [face["emotion"] for face in faces] == [fer.EMOTIONS[i] for i in expected.argmax(1)]
    assert (expected - expected.mean(0)).abs().max() > 0.1  # they depend on the input: the comparison is not vacuous


def test_two_runs_give_the_ensemble_probabilities_evaluate_gives(tmp_path, run_dir, capsys):
    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(1)
    config = training_config()
    second = fer.build_model(config)
    second.classifier[-1].weight.data *= 50
    torch.save({"model": second.state_dict(), "config": config}, other / "best.pt")
    paths = write_crops(tmp_path / "crops")
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--run", other, "--no-detect", "--amp", "off", *paths)
    images = torch.stack([fer.read_image(path) for path in paths])
    members = [fer.load_run(run, CPU)[0] for run in (run_dir, other)]
    expected = evaluate.ensemble_probabilities(members, images, CPU)[0]
    alone = [fer.predict_probabilities(member, images, CPU) for member in members]
    assert status == 0
    assert torch.tensor([probabilities_of(face) for face in faces]) == pytest.approx(expected, abs=1e-4)
    assert (alone[0] - alone[1]).abs().max() > 0.1  # the members differ: the average is not vacuous


def test_bf16_autocast_gives_nearly_the_float32_probabilities(tmp_path, run_dir, capsys):
    paths = write_crops(tmp_path / "crops")
    _, float32, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--amp", "off", *paths)
    status, bfloat16, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--amp", "on", *paths)
    assert status == 0
    assert torch.tensor([probabilities_of(face) for face in bfloat16]) == pytest.approx(
        torch.tensor([probabilities_of(face) for face in float32]), abs=0.05)


def test_nothing_is_written_next_to_the_inputs_unless_out_is_given(tmp_path, run_dir, capsys):
    paths = write_crops(tmp_path / "crops")
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", tmp_path / "crops")
    assert status == 0 and len(faces) == len(paths)
    assert files_under(tmp_path / "crops") == paths


def test_a_large_non_square_colour_photo_is_prepared_exactly_like_the_training_images(tmp_path, run_dir, capsys):
    rng = np.random.default_rng(1)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, size=(150, 230, 3), dtype=np.uint8)).save(path)

    prepared = predict.crop_faces(predict.open_image(path), [[0, 0, 230, 150]])[0]
    by_hand = Image.open(path).convert("L").crop((40, 0, 190, 150)).resize((48, 48), Image.BILINEAR)
    assert torch.equal(prepared, fer.read_image(path))
    assert torch.equal(prepared, torch.from_numpy(np.asarray(by_hand).copy()))

    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--amp", "off",
                                   "--out", tmp_path / "annotated", path)
    expected = fer.predict_probabilities(fer.load_run(run_dir, CPU)[0], prepared[None], CPU)
    assert status == 0 and faces[0]["box"] == [0, 0, 230, 150]
    assert torch.tensor([probabilities_of(faces[0])]) == pytest.approx(expected, abs=1e-4)
    assert (tmp_path / "annotated" / "photo.emotions.png").is_file()


def test_a_16_bit_gray_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path, run_dir, capsys):
    eight_bit = face_like(3, np.random.default_rng(0))
    path = tmp_path / "deep.png"
    Image.fromarray(eight_bit.astype(np.uint16) * 257).save(path)  # 0..255 -> 0..65535, a 16-bit PNG
    assert Image.open(path).mode.startswith("I;16")

    prepared = predict.crop_faces(predict.open_image(path), [[0, 0, 48, 48]])[0]
    assert torch.equal(prepared, torch.from_numpy(eight_bit))  # convert("L") would have made it all 255
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--amp", "off", path)
    expected = fer.predict_probabilities(fer.load_run(run_dir, CPU)[0], prepared[None], CPU)
    assert status == 0
    assert torch.tensor([probabilities_of(faces[0])]) == pytest.approx(expected, abs=1e-4)


# -----------------------------------------------------------------------------
# Folders: searched recursively, classified in batches, predict.py's own output never read back


def test_folders_are_searched_recursively_and_their_faces_classified_in_batches(tmp_path, run_dir, capsys,
                                                                                monkeypatch):
    top = write_crops(tmp_path / "photos", count=3)
    nested = write_crops(tmp_path / "photos" / "2024" / "june", count=4, prefix="june")
    (tmp_path / "photos" / "notes.txt").write_text("not a picture")
    batches = []
    predict_probabilities = fer.predict_probabilities
    monkeypatch.setattr(predict, "BATCH_SIZE", 3)
    monkeypatch.setattr(fer, "predict_probabilities",
                        lambda model, images, *a, **k: batches.append(len(images)) or predict_probabilities(
                            model, images, *a, **k))

    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", tmp_path / "photos")
    assert status == 0
    assert [face["image"] for face in faces] == [str(path) for path in top + nested]  # each folder sorted
    assert batches == [3, 3, 1]  # seven faces, three at a time: not one forward pass per image


def test_a_second_run_does_not_classify_the_annotated_copies_of_the_first(tmp_path, run_dir, capsys):
    paths = write_crops(tmp_path / "photos")
    out = tmp_path / "photos" / "annotated"  # --out inside the very folder being searched
    first = run_predict(capsys, "--run", run_dir, "--no-detect", "--out", out, tmp_path / "photos")
    assert files_under(out) == sorted(out / f"{path.stem}.emotions.png" for path in paths)
    (tmp_path / "photos" / "old.emotions.png").write_bytes((out / "face0.emotions.png").read_bytes())

    second = run_predict(capsys, "--run", run_dir, "--no-detect", "--out", out, tmp_path / "photos")
    assert first[0] == second[0] == 0
    assert [face["image"] for face in second[1]] == [str(path) for path in paths]


def test_annotated_copies_keep_the_folders_below_the_searched_folder(tmp_path, run_dir, capsys):
    write_crops(tmp_path / "photos" / "a", count=1)
    write_crops(tmp_path / "photos" / "b", count=1)  # the same file name, face0.png, in both
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--out", tmp_path / "out",
                                   tmp_path / "photos")
    assert status == 0 and len(faces) == 2
    assert files_under(tmp_path / "out") == [tmp_path / "out" / "a" / "face0.emotions.png",
                                             tmp_path / "out" / "b" / "face0.emotions.png"]


def test_csv_has_a_header_and_one_row_per_face_whose_probabilities_sum_to_one(tmp_path, run_dir, capsys):
    paths = write_crops(tmp_path / "crops", count=3)
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--csv", tmp_path / "faces.csv", *paths)
    with open(tmp_path / "faces.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert status == 0
    assert list(rows[0]) == ["source", "frame", "time_s", "face", "left", "top", "width", "height", "emotion",
                             *fer.EMOTIONS]
    assert [row["source"] for row in rows] == [str(path) for path in paths]
    for row, face in zip(rows, faces, strict=True):
        probabilities = [float(row[name]) for name in fer.EMOTIONS]
        assert sum(probabilities) == pytest.approx(1, abs=1e-3)
        assert row["emotion"] == fer.EMOTIONS[int(np.argmax(probabilities))] == face["emotion"]
        assert [int(row[key]) for key in ("left", "top", "width", "height")] == [0, 0, 48, 48]
        assert row["frame"] == row["time_s"] == ""  # photos have neither
        assert row["face"] == str(face["face"]) == "0"  # the first face, left to right, as in the JSON


def test_a_folder_named_as_out_still_has_its_pictures_analysed_and_its_copies_not_read_back(tmp_path, run_dir,
                                                                                             capsys, monkeypatch):
    paths = write_crops(tmp_path / "photos", count=2)
    for _ in range(2):  # the second time, the annotated copies of the first are in the folder searched
        status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--out", tmp_path / "photos",
                                       tmp_path / "photos")
        assert status == 0 and [face["image"] for face in faces] == [str(path) for path in paths]
    monkeypatch.chdir(tmp_path / "photos")
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--out", ".", "face0.png")
    assert status == 0 and [face["image"] for face in faces] == ["face0.png"]


def test_annotated_copies_of_two_pictures_with_the_same_name_do_not_overwrite_each_other(tmp_path, run_dir, capsys):
    first = write_crops(tmp_path / "A", count=1)[0]
    second = write_crops(tmp_path / "B", count=1)[0]  # also face0.png
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--out", tmp_path / "out", first, second)
    assert status == 0 and len(faces) == 2
    assert files_under(tmp_path / "out") == [tmp_path / "out" / "face0-2.emotions.png",
                                             tmp_path / "out" / "face0.emotions.png"]


def test_a_path_named_twice_or_also_found_in_a_folder_is_classified_once(tmp_path, run_dir, capsys):
    paths = write_crops(tmp_path / "photos", count=2)
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", paths[0], paths[0],
                                   tmp_path / "photos", tmp_path / "photos" / ".." / "photos")
    assert status == 0 and [face["image"] for face in faces] == [str(paths[0]), str(paths[1])]


def test_webp_tiff_and_gif_are_found_in_folders_as_when_named(tmp_path, run_dir, capsys):
    (tmp_path / "photos").mkdir()
    face = Image.fromarray(face_like(2, np.random.default_rng(0)))
    for suffix in ("webp", "tif", "tiff", "gif", "JPG"):
        face.save(tmp_path / "photos" / f"face.{suffix}")
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", tmp_path / "photos")
    assert status == 0
    assert sorted(Path(face["image"]).suffix for face in faces) == [".JPG", ".gif", ".tif", ".tiff", ".webp"]


def test_a_folder_without_pictures_is_one_error_line_and_exit_status_1(tmp_path, run_dir, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a picture")
    good = write_crops(tmp_path / "crops", count=1)
    status, faces, err = run_predict(capsys, "--run", run_dir, "--no-detect", tmp_path / "notes", good[0])
    assert status == 1 and [face["image"] for face in faces] == [str(good[0])]
    assert err.splitlines() == [err.splitlines()[0]]
    assert err.startswith(f"error: {tmp_path / 'notes'}: no pictures or videos in this folder (looked for .avi, .bmp")


def deny(monkeypatch, module, function, *denied):
    """Make `module.function(path, ...)` fail for the paths `denied` as the system does for a user without
    permission (the tests may run as root, whom chmod does not stop)."""
    real = getattr(module, function)

    def refuse_denied(path, *args, **kwargs):
        if Path(path) in denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, function, refuse_denied)


def test_a_folder_that_cannot_be_searched_is_one_error_line_and_the_rest_is_still_analysed(tmp_path, run_dir,
                                                                                         capsys, monkeypatch):
    paths = write_crops(tmp_path / "photos", count=2)
    locked = tmp_path / "photos" / "private"
    write_crops(locked, count=1)
    deny(monkeypatch, os, "scandir", locked)
    status, faces, err = run_predict(capsys, "--run", run_dir, "--no-detect", tmp_path / "photos")
    assert status == 1 and [face["image"] for face in faces] == [str(path) for path in paths]
    assert err.splitlines() == [f"error: {locked}: cannot search this folder (permission denied)"]


def test_a_plot_and_csv_written_into_the_folder_searched_are_not_read_back_the_next_time(tmp_path, run_dir, capsys):
    (tmp_path / "clips").mkdir()
    rng = np.random.default_rng(0)
    write_video(tmp_path / "clips" / "clip.avi", [face_like(i % 7, rng, size=48) for i in range(3)])
    for _ in range(2):
        status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--plot", tmp_path / "clips" / "plot.png",
                                       "--csv", tmp_path / "clips" / "faces.csv", tmp_path / "clips")
        assert status == 0 and [face["frame"] for face in faces] == [0, 1, 2]
    assert (tmp_path / "clips" / "plot.png").is_file()


@pytest.mark.parametrize("option", ["--csv", "--plot", "--out"])
def test_an_output_that_is_also_an_input_is_refused_before_anything_is_read(tmp_path, run_dir, capsys, option):
    paths = write_crops(tmp_path / "photos", count=2)
    before = paths[0].read_bytes()
    status, faces, err = run_predict(capsys, "--run", run_dir, "--no-detect", option, paths[0], *paths)
    assert status == 2 and faces == [] and paths[0].read_bytes() == before
    assert err.splitlines() == [f"error: {option} {paths[0]}: this is also an input; writing it would destroy it"]


def test_a_csv_named_like_a_picture_is_refused_before_anything_is_read(tmp_path, run_dir, capsys):
    write_crops(tmp_path / "photos", count=2)
    photo = tmp_path / "photos" / "holiday.jpg"
    photo.write_bytes(b"a photo the user keeps")
    status, faces, err = run_predict(capsys, "--run", run_dir, "--no-detect", "--csv", photo, tmp_path / "photos")
    assert status == 2 and faces == [] and photo.read_bytes() == b"a photo the user keeps"
    assert err.startswith(f"error: --csv {photo}: expected a new or CSV file") and len(err.splitlines()) == 1


def test_json_and_csv_hold_paths_as_utf8_not_escapes(tmp_path, run_dir, capsys):
    path = write_crops(tmp_path / "Übungen", count=1)[0]
    with pytest.raises(SystemExit):
        predict.main(["--run", str(run_dir), "--no-detect", "--csv", str(tmp_path / "faces.csv"), str(path)])
    line = capsys.readouterr().out
    assert "Übungen" in line and "\\u00dc" not in line and json.loads(line)["image"] == str(path)
    assert str(path) in (tmp_path / "faces.csv").read_text(encoding="utf-8")


# -----------------------------------------------------------------------------
# Bad input: one line per file, the others still classified


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


def write_decompression_bomb(path, side=20000):
    """A 69-byte PNG whose header claims side x side pixels: the header is all Pillow reads before refusing it."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", side, side)  # IHDR's width and height, after the signature, length and type
    png[29:33] = struct.pack(">I", zlib.crc32(png[12:29]))  # the chunk's checksum over its type and data
    path.write_bytes(bytes(png))
    return path


def test_a_decompression_bomb_among_good_files_gets_one_line_and_exit_status_1(tmp_path, run_dir, capsys):
    folder = tmp_path / "inbox"
    good = write_crops(folder, count=2)
    bomb = write_decompression_bomb(folder / "face1b.png")  # sorted between the two good ones
    status, faces, err = run_predict(capsys, "--run", run_dir, "--no-detect", folder)
    assert status == 1
    assert [face["image"] for face in faces] == [str(path) for path in good]
    assert err.splitlines() == [line for line in err.splitlines() if line.startswith(f"error: {bomb}: ")]
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_run_folder_without_a_checkpoint_is_named_in_the_message(tmp_path, capsys):
    status, faces, err = run_predict(capsys, "--run", tmp_path, "--no-detect", *write_crops(tmp_path, count=1))
    assert status == 1 and faces == []
    assert f"error: {tmp_path / 'best.pt'}: no checkpoint" in err


def test_without_run_the_released_model_is_used_and_its_absence_explained(tmp_path, run_dir, capsys, monkeypatch):
    crop = write_crops(tmp_path / "crops", count=1)
    monkeypatch.setattr(fer, "RELEASED_RUN", tmp_path / "release")
    status, faces, err = run_predict(capsys, "--no-detect", *crop)
    assert status == 1 and faces == []
    assert err.strip().startswith(f"error: {tmp_path / 'release'}:") and "--run" in err
    monkeypatch.setattr(fer, "RELEASED_RUN", run_dir)
    status, faces, _ = run_predict(capsys, "--no-detect", *crop)
    assert status == 0 and len(faces) == 1


def test_without_opencv_detection_says_how_to_install_it_and_no_detect_still_works(tmp_path, run_dir, capsys,
                                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    crop = write_crops(tmp_path, count=1)
    status, faces, err = run_predict(capsys, "--run", run_dir, crop[0])
    assert status == 1 and faces == [] and "make install-predict" in err
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", crop[0])
    assert status == 0 and len(faces) == 1


def test_a_picture_or_video_that_may_not_be_read_says_permission_denied(tmp_path, run_dir, capsys, monkeypatch):
    locked_picture, good = write_crops(tmp_path, count=2)
    locked_video = tmp_path / "clip.avi"
    locked_video.write_bytes(b"frames")
    deny(monkeypatch, builtins, "open", locked_picture, locked_video)
    status, faces, err = run_predict(capsys, "--run", run_dir, "--no-detect", locked_picture, good, locked_video)
    assert status == 1 and [face["image"] for face in faces] == [str(good)]
    assert err.splitlines() == [f"error: {locked_picture}: permission denied", f"error: {locked_video}: permission denied"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="chmod does not stop root")
def test_a_picture_without_read_permission_says_permission_denied(tmp_path, run_dir, capsys):
    locked = write_crops(tmp_path, count=1)[0]
    locked.chmod(0)
    status, _, err = run_predict(capsys, "--run", run_dir, "--no-detect", locked)
    assert status == 1 and err.splitlines() == [f"error: {locked}: permission denied"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a Unix thing")
def test_a_pipe_named_like_a_picture_is_not_a_regular_file_and_nothing_waits_on_it(tmp_path, run_dir, capsys):
    fifo = tmp_path / "face.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    good = write_crops(tmp_path / "crops", count=1)[0]
    status, faces, err = run_predict(capsys, "--run", run_dir, "--no-detect", fifo, good)
    assert status == 1 and [face["image"] for face in faces] == [str(good)]
    assert err.splitlines() == [f"error: {fifo}: not a regular file (a pipe, socket or device); expected an image "
                                f"or a video"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_error_line_and_exit_status_2(tmp_path, run_dir):
    crop = write_crops(tmp_path, count=1)[0]
    result = run_script("predict.py", "--run", str(run_dir), "--no-detect", "--device", "cuda", str(crop), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: --device cuda: ")


def test_output_whose_reader_has_gone_stops_quietly_as_unix_tools_do(tmp_path, run_dir):
    write_crops(tmp_path / "crops", count=3)
    read_end, write_end = os.pipe()
    os.close(read_end)  # `predict.py ... | head -1` once head has its line: every write fails
    with os.fdopen(write_end, "w") as closed_pipe:
        result = subprocess.run([sys.executable, str(PROJECT_DIR / "predict.py"), "--run", str(run_dir), "--no-detect",
                                 str(tmp_path / "crops")], stdout=closed_pipe, stderr=subprocess.PIPE, text=True,
                                cwd=tmp_path, timeout=300)
    assert result.returncode == 141 and result.stderr == ""


def test_help_documents_the_exit_statuses(capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert all(f"\n  {status} " in help_text for status in (0, 1, 2, 141))


def test_plot_without_a_video_among_the_inputs_is_refused(tmp_path, run_dir, capsys):
    crop = write_crops(tmp_path, count=1)[0]
    status, faces, err = run_predict(capsys, "--run", run_dir, "--no-detect", "--plot", tmp_path / "plot.png", crop)
    assert status == 2 and faces == [] and not (tmp_path / "plot.png").exists()
    assert err.splitlines() == [f"error: --plot {tmp_path / 'plot.png'}: plots videos, and none of the inputs is one"]


def test_a_picture_without_a_face_gets_one_no_face_row_and_exit_status_0(tmp_path, run_dir, capsys):
    pytest.importorskip("cv2", reason="face detection needs OpenCV: make install-predict")
    blank = tmp_path / "wall.png"
    Image.new("RGB", (320, 240), (180, 170, 160)).save(blank)
    status, faces, err = run_predict(capsys, "--run", run_dir, "--csv", tmp_path / "faces.csv", blank, ASTRONAUT)
    assert status == 0 and err == ""  # a holiday folder has pictures without a face: an answer, not an error
    assert [(face["image"], face["emotion"]) for face in faces] == [(str(blank), "no face"),
                                                                     (str(ASTRONAUT), faces[1]["emotion"])]
    assert faces[0]["box"] is None and faces[0]["probabilities"] is None and faces[1]["emotion"] in fer.EMOTIONS
    with open(tmp_path / "faces.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["source"], row["emotion"], row["left"]) for row in rows[:1]] == [(str(blank), "no face", "")]


def test_the_detector_finds_the_face_in_a_real_photo(tmp_path, run_dir, capsys):
    pytest.importorskip("cv2", reason="face detection needs OpenCV: make install-predict")
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--out", tmp_path, ASTRONAUT)
    assert status == 0 and len(faces) == 1
    left, top, width, height = faces[0]["box"]
    assert abs(left + width / 2 - 224) < 15 and abs(top + height / 2 - 114) < 15  # on her face
    assert (tmp_path / "astronaut.emotions.png").is_file()


def test_a_photo_of_two_faces_scaled_to_4000x2160_gives_the_two_faces_and_no_false_ones(tmp_path, run_dir, capsys):
    pytest.importorskip("cv2", reason="face detection needs OpenCV: make install-predict")
    portrait = Image.open(ASTRONAUT).convert("RGB")
    canvas = Image.new("RGB", (1100, 594), (200, 200, 200))
    canvas.paste(portrait, (20, 40))
    canvas.paste(portrait.transpose(Image.FLIP_LEFT_RIGHT), (568, 40))
    canvas.resize((4000, 2160), Image.BICUBIC).save(tmp_path / "two.jpg", quality=92)
    # At full size the cascade also "finds" faces in her hair, suit and the flag's texture.
    status, faces, _ = run_predict(capsys, "--run", run_dir, tmp_path / "two.jpg")
    assert status == 0 and len(faces) == 2
    centres = [(left + width / 2, top + height / 2) for left, top, width, height in (face["box"] for face in faces)]
    expected = [((20 + 224) * 4000 / 1100, (40 + 114) * 2160 / 594), ((568 + 512 - 224) * 4000 / 1100,
                                                                       (40 + 114) * 2160 / 594)]
    for (x, y), (expected_x, expected_y) in zip(centres, expected):
        assert abs(x - expected_x) < 60 and abs(y - expected_y) < 60
    assert [face["face"] for face in faces] == [0, 1]  # numbered left to right


# -----------------------------------------------------------------------------
# Videos: a line per face per analysed frame, --every, smoothing, the annotated copy, the plot


def test_each_analysed_video_frame_is_classified_like_a_photo_with_its_index_and_time(tmp_path, run_dir, capsys):
    rng = np.random.default_rng(0)
    video = write_video(tmp_path / "clip.avi", [face_like(i % 7, rng, size=96) for i in range(10)], fps=10)
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--amp", "off", "--every", 3,
                                   "--out", tmp_path / "out", "--plot", tmp_path / "clip.png",
                                   "--csv", tmp_path / "faces.csv", video)
    assert status == 0
    assert [(face["video"], face["frame"], face["time_s"]) for face in faces] == [
        (str(video), frame, frame / 10) for frame in (0, 3, 6, 9)]
    frames = read_video(video)
    crops = torch.stack([predict.crop_faces(frames[face["frame"]], [[0, 0, 96, 96]])[0] for face in faces])
    expected = fer.predict_probabilities(fer.load_run(run_dir, CPU)[0], crops, CPU)
    assert torch.tensor([probabilities_of(face) for face in faces]) == pytest.approx(expected, abs=1e-4)

    annotated = read_video(tmp_path / "out" / "clip.emotions.mp4")
    assert len(annotated) == 4 and annotated[0].width == 480  # the analysed frames, drawn at least 480 wide
    assert Image.open(tmp_path / "clip.png").format == "PNG"
    with open(tmp_path / "faces.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["source"], row["frame"], row["time_s"]) for row in rows] == [
        (str(video), str(frame), str(frame / 10)) for frame in (0, 3, 6, 9)]


def test_smoothing_averages_each_face_over_its_last_k_frames(tmp_path, run_dir, capsys):
    rng = np.random.default_rng(0)
    video = write_video(tmp_path / "clip.avi", [face_like(i % 7, rng, size=48) for i in range(8)])
    _, raw, _ = run_predict(capsys, "--run", run_dir, "--no-detect", video)
    status, smoothed, _ = run_predict(capsys, "--run", run_dir, "--no-detect", "--smooth", 3, video)
    raw = torch.tensor([probabilities_of(face) for face in raw])
    expected = torch.stack([raw[max(0, i - 2):i + 1].mean(0) for i in range(len(raw))])
    assert status == 0
    assert torch.tensor([probabilities_of(face) for face in smoothed]) == pytest.approx(expected, abs=2e-4)
    assert (raw[1:] - raw[:-1]).abs().max() > 0.1  # the frames differ: the smoothing is not vacuous


def test_a_face_moving_through_a_video_is_found_in_every_frame_and_followed(tmp_path, run_dir, capsys):
    pytest.importorskip("cv2", reason="face detection needs OpenCV: make install-predict")
    head = Image.open(ASTRONAUT).convert("RGB").crop((96, 0, 352, 256)).resize((200, 200))
    frames, centres = [], []
    for i in range(6):  # 640x480 frames, searched on a copy 320 wide
        frame = Image.new("RGB", (640, 480), (90, 110, 130))
        frame.paste(head, (60 + 60 * i, 40 + 30 * i))
        frames.append(np.asarray(frame))
        centres.append((60 + 60 * i + 128.5 * 200 / 256, 40 + 30 * i + 114.5 * 200 / 256))  # where her face is
    status, faces, _ = run_predict(capsys, "--run", run_dir, write_video(tmp_path / "walk.avi", frames))
    assert status == 0
    assert [(face["frame"], face["face"]) for face in faces] == [(i, 0) for i in range(6)]  # one face, followed
    for face, (x, y) in zip(faces, centres):
        left, top, width, height = face["box"]
        assert abs(left + width / 2 - x) < 12 and abs(top + height / 2 - y) < 12


def test_faces_are_followed_by_box_overlap(tmp_path):
    tracks = predict.FaceTracks(window=2)
    one, two = torch.eye(7)[0], torch.eye(7)[1]
    assert [n for n, _ in tracks.update([[0, 0, 10, 10], [50, 0, 10, 10]], [one, two])] == [0, 1]
    followed = tracks.update([[48, 2, 10, 10], [2, 1, 10, 10]], [one, two])  # both moved a little; order swapped
    assert [n for n, _ in followed] == [1, 0]
    assert followed[0][1] == pytest.approx((two + one) / 2) and followed[1][1] == pytest.approx((one + two) / 2)
    assert [n for n, _ in tracks.update([[200, 200, 10, 10]], [one])] == [2]  # far from both: a new face


def write_moving_face_video(path, positions, frame_size=(640, 480)):
    """A video of her head (size x size pixels) at each (left, top, size) of `positions` over a plain background."""
    head = Image.open(ASTRONAUT).convert("RGB").crop((96, 0, 352, 256))
    frames = []
    for left, top, size in positions:
        frame = Image.new("RGB", frame_size, (90, 110, 130))
        frame.paste(head.resize((size, size)), (left, top))
        frames.append(np.asarray(frame))
    return write_video(path, frames, fps=30)


def test_one_face_in_60_frames_analysed_every_2nd_frame_is_one_face_in_30_lines(tmp_path, run_dir, capsys):
    pytest.importorskip("cv2", reason="face detection needs OpenCV: make install-predict")
    positions = []
    for i in range(60):  # drifting round the frame and zooming, as a face in a hand-held clip
        phase = 2 * np.pi * i / 60
        size = int(220 + 60 * np.sin(phase))
        positions.append((int(40 + (560 - size) * (0.5 + 0.5 * np.sin(phase))),
                          int(20 + (440 - size) * (0.5 + 0.5 * np.cos(phase))), size))
    video = write_moving_face_video(tmp_path / "drift.avi", positions)
    status, faces, _ = run_predict(capsys, "--run", run_dir, "--every", 2, video)
    assert status == 0
    assert [face["frame"] for face in faces] == list(range(0, 60, 2))  # one line per analysed frame
    assert {face["face"] for face in faces} == {0}


def test_a_face_moving_22_pixels_per_frame_stays_one_track(tmp_path, run_dir, capsys):
    pytest.importorskip("cv2", reason="face detection needs OpenCV: make install-predict")

    def bounce(distance, span):  # back and forth across `span` pixels
        distance %= 2 * span
        return distance if distance < span else 2 * span - distance

    # A face about 55 pixels wide moving diagonally: between frames its box overlaps its last one by less
    # than SAME_FACE, so it is also looked for around its last box, and found there again.
    video = write_moving_face_video(tmp_path / "walk.avi", [(10 + bounce(22 * i, 500), 10 + bounce(22 * i, 340), 130)
                                                            for i in range(40)])
    status, faces, _ = run_predict(capsys, "--run", run_dir, video)
    assert status == 0
    assert [face["frame"] for face in faces] == list(range(40))
    assert {face["face"] for face in faces} == {0}


def test_a_face_found_again_around_its_last_box_is_kept_once():
    assert predict.without_duplicates([[100, 100, 50, 50], [104, 98, 52, 52], [300, 100, 50, 50]]) == [
        [100, 100, 50, 50], [300, 100, 50, 50]]


def test_a_video_cut_short_warns_how_many_of_the_frames_its_header_lists_were_read(tmp_path, run_dir, capsys):
    rng = np.random.default_rng(0)
    video = write_video(tmp_path / "clip.avi", [face_like(i % 7, rng, size=96) for i in range(60)])
    data = video.read_bytes()
    video.write_bytes(data[:len(data) // 2])  # the header still says 60 frames
    status, faces, err = run_predict(capsys, "--run", run_dir, "--no-detect", video)
    read = len(faces)
    assert status == 0 and 0 < read < 60 and [face["frame"] for face in faces] == list(range(read))
    assert err.splitlines() == [f"warning: {video}: its header says 60 frames, and {read} could be read (the file "
                                f"is cut short or damaged); those {read} were analysed"]


def test_a_video_without_a_face_gets_one_no_face_line(tmp_path, run_dir, capsys):
    pytest.importorskip("cv2", reason="face detection needs OpenCV: make install-predict")
    video = write_video(tmp_path / "wall.avi", [np.full((120, 160), 128, dtype=np.uint8)] * 3)
    status, faces, err = run_predict(capsys, "--run", run_dir, video)
    assert status == 0 and err == ""
    assert faces == [{"video": str(video), "frame": None, "time_s": None, "face": None, "box": None,
                      "emotion": "no face", "probabilities": None}]


def test_a_file_that_is_not_a_video_gets_one_line_and_nothing_from_ffmpeg(tmp_path, run_dir):
    pytest.importorskip("cv2", reason="videos need OpenCV: make install-predict")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    good = write_crops(tmp_path, count=1)
    result = run_script("predict.py", "--run", str(run_dir), "--no-detect", str(broken), str(good[0]), cwd=tmp_path)
    assert result.returncode == 1
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(good[0])]
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"error: {broken}: cannot decode")


# -----------------------------------------------------------------------------
# Webcam: a clear line, not a traceback, where there is no display or no camera


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="$DISPLAY says whether there is a display on Linux")
def test_webcam_without_a_display_is_one_error_line_and_exit_status_1(tmp_path, run_dir):
    pytest.importorskip("cv2", reason="the webcam needs OpenCV: make install-predict")
    result = run_script("predict.py", "--run", str(run_dir), "--webcam", cwd=tmp_path, DISPLAY="", WAYLAND_DISPLAY="")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: --webcam shows a window, and there is no display ($DISPLAY is not set)"]


def test_webcam_with_headless_opencv_or_no_camera_is_one_error_line(tmp_path, run_dir, capsys, monkeypatch):
    cv2 = pytest.importorskip("cv2", reason="the webcam needs OpenCV: make install-predict")
    monkeypatch.setenv("DISPLAY", ":0")

    def no_gui(name):  # what opencv-python-headless does
        raise cv2.error("The function is not implemented. Rebuild the library with GTK+ 2.x support")

    monkeypatch.setattr(cv2, "namedWindow", no_gui)
    status, _, err = run_predict(capsys, "--run", run_dir, "--webcam")
    assert status == 1 and err.strip().startswith("error: --webcam shows a window, and this OpenCV cannot open one")
    monkeypatch.setattr(cv2, "namedWindow", lambda name: None)  # an OpenCV with windows, on a machine without cameras
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    status, _, err = run_predict(capsys, "--run", run_dir, "--webcam", 99)
    assert status == 1 and err.strip() == "error: --webcam 99: no camera there, or another program is using it"
