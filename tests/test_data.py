"""Reading FER-2013: both layouts, the cache, and one clear error for each kind of bad input."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import fer
from conftest import write_fer2013_csv, write_kaggle_folder


def test_kaggle_folder_gives_the_three_original_splits_from_file_name_prefixes(kaggle_folder):
    data = fer.load_fer2013(kaggle_folder)
    sizes = {split: len(data[split]["labels"]) for split in ("train", "val", "test")}
    assert sizes == {"train": 6 * 7, "val": 2 * 7, "test": 2 * 7}
    assert data["train"]["images"].dtype == torch.uint8
    assert data["train"]["images"].shape[1:] == (48, 48)
    assert torch.bincount(data["val"]["labels"]).tolist() == [2] * 7


def test_labels_follow_fer2013_order(kaggle_folder):
    data = fer.load_fer2013(kaggle_folder)
    happy = data["train"]["images"][data["train"]["labels"] == fer.EMOTIONS.index("happy")]
    # conftest makes brightness grow with the label: happy (3) is brighter than angry (0)
    angry = data["train"]["images"][data["train"]["labels"] == 0]
    assert fer.EMOTIONS.index("happy") == 3 and happy.float().mean() > angry.float().mean()


def test_folder_without_prefixes_gets_a_stratified_seeded_validation_split(tmp_path, capsys):
    root = write_kaggle_folder(tmp_path / "plain", per_usage={"Training": 10, "PrivateTest": 2}, prefixed=False)
    data = fer.load_fer2013(root, val_fraction=0.2, seed=1)
    assert "stratified 20% validation split" in capsys.readouterr().out
    assert torch.bincount(data["val"]["labels"]).tolist() == [2] * 7
    assert torch.bincount(data["train"]["labels"]).tolist() == [8] * 7
    assert len(data["test"]["labels"]) == 14
    again = fer.load_fer2013(root, val_fraction=0.2, seed=1, cache_dir=tmp_path / "other-cache")
    assert torch.equal(again["val"]["images"], data["val"]["images"])


def test_csv_gives_the_same_splits_as_its_usage_column(tmp_path):
    path = write_fer2013_csv(tmp_path / "fer2013.csv")
    data = fer.load_fer2013(path)
    assert [len(data[s]["labels"]) for s in ("train", "val", "test")] == [42, 14, 14]
    assert data["test"]["images"].shape == (14, 48, 48)
    assert fer.load_fer2013(tmp_path)["train"]["labels"].tolist() == data["train"]["labels"].tolist()


def test_rgb_and_odd_sized_images_are_converted_to_48x48_grayscale(kaggle_folder):
    rgb = np.zeros((96, 120, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red -> luminance 76
    Image.fromarray(rgb).save(kaggle_folder / "train" / "sad" / "Training_big.png")
    data = fer.load_fer2013(kaggle_folder)
    assert data["train"]["images"].shape[1:] == (48, 48)
    assert (data["train"]["images"] == 76).flatten(1).all(1).sum() == 1


def test_second_load_comes_from_the_cache_and_a_changed_source_invalidates_it(kaggle_folder, monkeypatch):
    first = fer.load_fer2013(kaggle_folder)
    with monkeypatch.context() as patch:
        patch.setattr(fer, "read_image_folders", lambda *args: pytest.fail("decoded again"))
        assert torch.equal(fer.load_fer2013(kaggle_folder)["train"]["images"], first["train"]["images"])
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(kaggle_folder / "train" / "angry" / "Training_new.png")
    assert len(fer.load_fer2013(kaggle_folder)["train"]["labels"]) == len(first["train"]["labels"]) + 1


@pytest.mark.parametrize("breakage, expected", [
    (lambda root: root / "nowhere", "dataset not found"),
    (lambda root: [os.rename(root / "test", root / "tests"), root][1], "missing folder"),
    (lambda root: [os.rename(root / "train" / "sad", root / "train" / "sadness"), root][1], "unknown class folder 'sadness'"),
    (lambda root: [[p.unlink() for p in (root / "test").rglob("*.png")], root][1], "no images"),
    (lambda root: [(root / "train" / "fear" / "Training_x.jpg").write_text("not a jpeg"), root][1], "cannot decode"),
    (lambda root: [[p.unlink() for p in (root / "test").rglob("PrivateTest_*")], root][1], "no PrivateTest_"),
])
def test_bad_folder_input_raises_one_clear_error_naming_the_path(kaggle_folder, breakage, expected):
    with pytest.raises(fer.DataError, match=expected) as error:
        fer.load_fer2013(breakage(kaggle_folder))
    assert str(kaggle_folder) in str(error.value)


@pytest.mark.parametrize("content, expected", [
    ("label,pixels,Usage\n0,1 2 3,Training\n", "missing emotion"),
    ("emotion,pixels,Usage\n0,1 2 3,Training\n", "line 2"),
    ("emotion,pixels,Usage\n9," + " ".join(["0"] * 2304) + ",Training\n", "line 2"),
])
def test_bad_csv_raises_one_clear_error_naming_the_path(tmp_path, content, expected):
    path = tmp_path / "fer2013.csv"
    path.write_text(content)
    with pytest.raises(fer.DataError, match=expected) as error:
        fer.load_fer2013(path)
    assert str(path) in str(error.value)


def test_test_images_copied_from_train_are_found_by_pixel_hash():
    train = torch.randint(0, 256, (5, 48, 48), dtype=torch.uint8)
    test = torch.stack([train[2], torch.zeros(48, 48, dtype=torch.uint8), train[4]])
    assert evaluate.not_in_train_mask(test, train).tolist() == [False, True, False]


def test_a_training_fraction_keeps_every_class_in_proportion_and_the_other_splits_whole():
    labels = torch.arange(7).repeat_interleave(torch.tensor([40, 10, 40, 70, 50, 30, 50]))
    data = {"train": {"images": torch.arange(len(labels)), "labels": labels},
            "val": {"images": torch.zeros(3), "labels": torch.zeros(3)}}
    subset = fer.training_subset(data, 0.1, seed=0)
    assert torch.bincount(subset["train"]["labels"]).tolist() == [4, 1, 4, 7, 5, 3, 5]
    assert torch.equal(subset["train"]["labels"], labels[subset["train"]["images"]])  # images stay with labels
    assert subset["val"] is data["val"] and fer.training_subset(data, 1.0, seed=0) is data
