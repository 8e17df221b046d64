"""get_data.py: every way of getting FER-2013 and its FER+ votes into place, offline, on synthetic look-alikes."""
import csv
import gzip
import shutil
import sys
import tarfile
import types
import urllib.error
from pathlib import Path

import pytest

import fer
import get_data
from conftest import run_script, write_fer2013_csv, write_kaggle_folder

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


# FER+ votes. Kaggle's file names carry no fer2013.csv row, so the shipped alignment joins the votes to them.

def write_alignment(path, rows_by_file):
    """A shipped-alignment look-alike: kaggle_path -> fer2013.csv row ("" for a file FER+ has no image for)."""
    with gzip.open(path, "wt", newline="") as file:
        file.write("kaggle_path,fer2013_row\n" + "".join(f"{name},{row}\n" for name, row in rows_by_file.items()))
    return path


def write_fer2013new(path, rows, entries):
    """A fer2013new.csv look-alike of `rows` rows: {row: (usage, ten votes)} for the rows FER+ named an image
    for; the others have a blank image name (and votes that must not be used)."""
    lines = ["Usage,Image name," + ",".join(fer.FERPLUS_COLUMNS)]
    for row in range(rows):
        usage, votes = entries.get(row, ("Training", None))
        lines.append(f"{usage},{f'fer{row:07d}.png' if votes else ''}," + ",".join(map(str, votes or [1] * 10)))
    path.write_text("\n".join(lines) + "\n")
    return path


def no_download(monkeypatch):
    monkeypatch.setattr(get_data, "download_ferplus", lambda: pytest.fail("downloaded although not needed"))


def read_rows(path):
    with open(path, newline="") as file:
        return {row["kaggle_path"]: row for row in csv.DictReader(file)}


def test_kaggle_layout_gets_the_votes_joined_through_the_alignment(tmp_path, monkeypatch, capsys):
    target = write_kaggle_folder(tmp_path / "data" / "fer2013", per_usage={"Training": 1, "PublicTest": 1,
                                                                            "PrivateTest": 1})
    files = sorted(path.relative_to(target).as_posix() for path in target.rglob("*.png"))
    rows_by_file = {name: "" for name in files if name != "train/sad/Training_40000.png"}  # one unknown name
    rows_by_file.update({"train/angry/Training_00000.png": 35886,  # rows in any order, up to the last one
                         "test/happy/PrivateTest_30000.png": 5,
                         "train/fear/Training_20000.png": 7})  # a row FER+ left without an image name
    monkeypatch.setattr(get_data, "ALIGNMENT", write_alignment(tmp_path / "alignment.csv.gz", rows_by_file))
    ferplus = write_fer2013new(tmp_path / "fer2013new.csv", sum(get_data.PUBLISHED_SIZES),
                               {35886: ("Training", [0, 0, 0, 0, 7, 1, 2, 0, 0, 0]),
                                5: ("PrivateTest", [1, 9, 0, 0, 0, 0, 0, 0, 0, 0])})
    no_download(monkeypatch)

    assert get_data.get_ferplus(target, get_data.get_fer2013(target), ferplus)
    rows = read_rows(target / fer.FERPLUS_VOTES)
    assert sorted(rows) == files
    angry, happy = rows["train/angry/Training_00000.png"], rows["test/happy/PrivateTest_30000.png"]
    assert [angry[column] for column in fer.FERPLUS_COLUMNS] == ["0", "0", "0", "0", "7", "1", "2", "0", "0", "0"]
    assert (angry["usage"], angry["fer2013_row"], angry["ferplus_image_name"]) == ("Training", "35886",
                                                                                   "fer0035886.png")
    assert (happy["usage"], happy["happiness"]) == ("PrivateTest", "9")
    for without_votes in ("train/fear/Training_20000.png", "test/sad/PublicTest_40000.png",
                          "train/sad/Training_40000.png"):
        assert [rows[without_votes][column] for column in fer.FERPLUS_COLUMNS] == [""] * 10
    assert "1 of 21 images" in capsys.readouterr().out  # the unknown name is reported
    votes = fer.load_fer2013(target)["test"]["votes"]  # what training reads: PrivateTest, one image with votes
    assert (~votes.isnan().any(1)).sum() == 1 and votes.nansum(0)[1] == 9


def test_a_fer2013new_csv_in_another_row_order_is_refused(tmp_path, monkeypatch):
    target = write_kaggle_folder(tmp_path / "data" / "fer2013")
    monkeypatch.setattr(get_data, "ALIGNMENT", write_alignment(tmp_path / "alignment.csv.gz",
                                                               {"test/happy/PrivateTest_30000.png": 5}))
    ferplus = write_fer2013new(tmp_path / "fer2013new.csv", sum(get_data.PUBLISHED_SIZES),
                               {5: ("Training", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0])})
    with pytest.raises(fer.DataError, match="row 5 is Training, but test/happy/PrivateTest_30000.png"):
        get_data.get_ferplus(target, None, ferplus)
    assert not (target / fer.FERPLUS_VOTES).exists()


def test_fer2013_csv_layout_gets_fer2013new_csv_found_in_data_copied_beside_it(tmp_path, monkeypatch):
    target = tmp_path / "data" / "fer2013"
    target.mkdir(parents=True)
    write_fer2013_csv(target / "fer2013.csv")
    data = get_data.get_fer2013(target)
    rows = sum(SIZES)
    surprised = [0, 0, 10, 0, 0, 0, 0, 0, 0, 0]
    write_fer2013new(tmp_path / "data" / "fer2013new.csv", rows, {rows - 1: ("PrivateTest", surprised)})
    no_download(monkeypatch)
    assert get_data.get_ferplus(target, data)
    assert (target / "fer2013new.csv").read_text() == (tmp_path / "data" / "fer2013new.csv").read_text()
    votes = fer.load_fer2013(target)["test"]["votes"]
    assert (~votes.isnan().any(1)).tolist() == [False] * (SIZES[2] - 1) + [True]  # the last row, and only it


def test_fer2013new_csv_with_another_row_count_than_fer2013_csv_is_refused(tmp_path, monkeypatch):
    target = tmp_path / "data" / "fer2013"
    target.mkdir(parents=True)
    write_fer2013_csv(target / "fer2013.csv")
    ferplus = write_fer2013new(tmp_path / "fer2013new.csv", sum(SIZES) - 1, {})
    with pytest.raises(fer.DataError, match=f"{sum(SIZES) - 1} rows, but fer2013.csv has {sum(SIZES)}"):
        get_data.get_ferplus(target, get_data.get_fer2013(target), ferplus)
    assert not (target / "fer2013new.csv").exists()


def test_offline_without_fer2013new_csv_says_where_to_put_it_and_fer2013_still_works(tmp_path, monkeypatch, capsys):
    def offline():
        raise urllib.error.URLError("Temporary failure in name resolution")

    target = write_kaggle_folder(tmp_path / "data" / "fer2013")
    monkeypatch.setattr(get_data, "download_ferplus", offline)
    assert not get_data.get_ferplus(target, get_data.get_fer2013(target))
    message = capsys.readouterr().out
    assert "name resolution" in message and get_data.FERPLUS_URL in message and "FERPLUS=" in message
    assert str(tmp_path / "data" / "fer2013new.csv") in message
    assert not (target / fer.FERPLUS_VOTES).exists()


def test_votes_already_in_place_are_kept(tmp_path, monkeypatch):
    target = write_kaggle_folder(tmp_path / "data" / "fer2013")
    votes = target / fer.FERPLUS_VOTES
    votes.write_text("kaggle_path," + ",".join(fer.FERPLUS_COLUMNS) + "\n")
    no_download(monkeypatch)
    assert not get_data.get_ferplus(target, None)
    assert votes.read_text() == "kaggle_path," + ",".join(fer.FERPLUS_COLUMNS) + "\n"


def test_make_data_with_a_file_that_is_not_fer2013new_csv_ends_with_one_error_line(tmp_path):
    target = write_kaggle_folder(tmp_path / "data" / "fer2013")
    wrong = tmp_path / "label.csv"
    wrong.write_text("Usage,Image name,neutral,happiness\nTraining,fer0000000.png,4,6\n")
    result = run_script("get_data.py", "--data", str(target), "--ferplus", str(wrong), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {wrong}: not FERPlus's fer2013new.csv; missing the columns NF, anger, contempt, disgust, fear, "
        f"sadness, surprise, unknown"]
