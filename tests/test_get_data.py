"""get_data.py: every way of getting FER-2013 into place, offline, on synthetic look-alikes."""
import shutil
import sys
import tarfile
import types
from pathlib import Path

import pytest

import fer
import get_data
from conftest import write_fer2013_csv, write_kaggle_folder

SIZES = [6 * 7, 2 * 7, 2 * 7]  # conftest's default: 6 Training, 2 PublicTest, 2 PrivateTest images per class


def split_sizes(data):
    return [len(data[split]["labels"]) for split in ("train", "val", "test")]


def kaggle_zip(tmp_path):
    """data/archive.zip shaped like Kaggle's msambare/fer2013 download: train/ and test/ at the top."""
    folder = write_kaggle_folder(tmp_path / "download")
    return Path(shutil.make_archive(str(tmp_path / "data" / "archive"), "zip", root_dir=folder))


def fake_kagglehub(monkeypatch, dataset_download):
    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=dataset_download))


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".partial"))


def test_archive_zip_left_in_data_becomes_a_readable_dataset(tmp_path):
    kaggle_zip(tmp_path)
    target = tmp_path / "data" / "fer2013"
    assert split_sizes(get_data.get_fer2013(target)) == SIZES
    assert split_sizes(fer.load_fer2013(target)) == SIZES
    assert leftovers(tmp_path / "data") == []


def test_fer2013_csv_given_as_archive_becomes_a_readable_dataset(tmp_path):
    csv_file = write_fer2013_csv(tmp_path / "my-download.csv")  # any name: it is placed as fer2013.csv
    target = tmp_path / "data" / "fer2013"
    assert split_sizes(get_data.get_fer2013(target, archive=csv_file)) == SIZES
    assert (target / "fer2013.csv").is_file() and csv_file.is_file()  # a copy: the user's file stays


def test_tar_gz_with_a_nested_fer2013_csv_is_found_and_unpacked(tmp_path):
    # The original challenge's fer2013.tar.gz holds fer2013/fer2013.csv.
    (tmp_path / "fer2013").mkdir()
    write_fer2013_csv(tmp_path / "fer2013" / "fer2013.csv")
    archive = tmp_path / "fer2013.tar.gz"
    with tarfile.open(archive, "w:gz") as tar_file:
        tar_file.add(tmp_path / "fer2013", arcname="fer2013")
    assert split_sizes(get_data.get_fer2013(tmp_path / "data" / "fer2013", archive=archive)) == SIZES


def test_truncated_zip_gives_a_clear_error_and_leaves_no_target(tmp_path):
    archive = kaggle_zip(tmp_path)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(fer.DataError, match=r"archive\.zip: cannot unpack it .* download it again"):
        get_data.get_fer2013(tmp_path / "data" / "fer2013")
    assert not (tmp_path / "data" / "fer2013").exists()
    assert leftovers(tmp_path / "data") == []


def test_without_an_archive_kagglehub_downloads_and_the_result_is_copied_into_place(tmp_path, monkeypatch):
    cache = write_kaggle_folder(tmp_path / "kagglehub-cache" / "versions" / "1")
    handles = []
    fake_kagglehub(monkeypatch, lambda handle: handles.append(handle) or str(cache))
    target = tmp_path / "data" / "fer2013"
    assert split_sizes(get_data.get_fer2013(target)) == SIZES
    assert handles == ["msambare/fer2013"]
    assert not target.is_symlink() and (cache / "train").is_dir()  # a copy; kagglehub's cache is untouched


def test_offline_download_lists_the_three_ways_and_leaves_no_target(tmp_path, monkeypatch):
    def offline(handle):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    fake_kagglehub(monkeypatch, offline)
    with pytest.raises(fer.DataError) as error:
        get_data.get_fer2013(tmp_path / "data" / "fer2013")
    message = str(error.value)
    assert "api.kaggle.com" in message and get_data.KAGGLE_URL in message and "ARCHIVE=" in message
    assert "1." in message and "2." in message and "3." in message
    assert not (tmp_path / "data" / "fer2013").exists() and leftovers(tmp_path / "data") == []


def test_without_kagglehub_installed_the_message_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # makes `import kagglehub` raise ImportError
    with pytest.raises(fer.DataError, match="kagglehub is not installed"):
        get_data.get_fer2013(tmp_path / "data" / "fer2013")


def test_an_existing_complete_copy_is_left_untouched(tmp_path, monkeypatch):
    target = write_kaggle_folder(tmp_path / "data" / "fer2013")
    kaggle_zip(tmp_path)  # an archive beside it must not replace it either
    before = {path: path.stat().st_mtime_ns for path in target.rglob("*")}
    fake_kagglehub(monkeypatch, lambda handle: pytest.fail("downloaded although the data was there"))
    assert split_sizes(get_data.get_fer2013(target)) == SIZES
    assert {path: path.stat().st_mtime_ns for path in target.rglob("*")} == before


def test_an_existing_copy_that_does_not_load_is_reported_never_replaced(tmp_path):
    target = tmp_path / "data" / "fer2013"
    (target / "train").mkdir(parents=True)
    kaggle_zip(tmp_path)
    with pytest.raises(fer.DataError, match="is there but does not load"):
        get_data.get_fer2013(target)
    assert sorted(path.name for path in target.iterdir()) == ["train"]
