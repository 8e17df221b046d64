"""
Get FER-2013 into data/fer2013 (or $FER_DATA) in the Kaggle layout, stopping at the first way that works:

  1. it is already there and loads: nothing to do;
  2. a Kaggle download you already have, given with --archive or found next to the target (in data/):
     archive.zip / fer2013.zip (folders train/ and test/), fer2013.csv, or a .tar.gz holding either;
  3. otherwise Kaggle's own client, kagglehub, downloads msambare/fer2013 (public: no account needed).

"Loads" means every image decodes and all three splits are non-empty; a copy whose split sizes differ from
the published 28,709 / 3,589 / 3,589 (a subset, say) is used, with a note. Steps 2 and 3 fill a hidden
folder beside the target, check its layout, rename it into place in one step, then decode it (removing it
again if that fails): an interrupted or failed run never leaves a data/fer2013 that passes for complete.

Then the FER+ crowd votes (Barsoum et al., 2016, MIT licence), ten per image: FERPlus's fer2013new.csv,
given with --ferplus, found in data/, or downloaded from GitHub. Its rows follow fer2013.csv's rows, so
beside a fer2013.csv it is copied as it is. Kaggle's file names carry no row number: for the Kaggle layout,
the alignment shipped in data/ferplus_alignment.csv.gz (Kaggle file -> fer2013.csv row) joins the votes
into ferplus_alignment.csv in the dataset folder. Votes already in place are kept. The votes are optional:
without them everything works but --labels ferplus and the FER+ scores.

    python get_data.py [--data PATH] [--archive FILE] [--ferplus FILE]
"""
import argparse
import csv
import gzip
import http.client
import io
import shutil
import sys
import tarfile
import urllib.request
import zipfile
import zlib
from pathlib import Path

import torch

import fer

KAGGLE_DATASET = "msambare/fer2013"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}"
# As Kaggle's website, the kaggle CLI and the original 2013 challenge name their downloads.
ARCHIVE_NAMES = ("archive.zip", "fer2013.zip", "fer2013.csv", "fer2013.tar.gz")
PUBLISHED_SIZES = [28709, 3589, 3589]  # Training, PublicTest, PrivateTest


def how_to_get_it(reason, target):
    return (f"{reason}\nGet FER-2013 in one of three ways, then run `make data` again:\n"
            f"  1. on a machine with internet, `make data` downloads it with kagglehub (no Kaggle account needed);\n"
            f"  2. download archive.zip from {KAGGLE_URL} and run `make data ARCHIVE=path/to/archive.zip`\n"
            f"     (or put archive.zip, fer2013.zip, fer2013.csv or fer2013.tar.gz in {target.parent}/);\n"
            f"  3. put its train/ and test/ folders (or fer2013.csv) at {target} yourself, or point FER_DATA at them.")


def find_archive(folder):
    """The first Kaggle download the user left in `folder`, or None."""
    return next((folder / name for name in ARCHIVE_NAMES if (folder / name).is_file()), None)


def unpack(archive, staging):
    """Extract a .zip or .tar.gz, or copy a fer2013.csv, into the empty folder `staging`."""
    if not archive.is_file():
        raise fer.DataError(f"{archive}: no such file; expected a FER-2013 download (.zip, .tar.gz or fer2013.csv)")
    print(f"reading {archive} into {staging}")
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zip_file:
                zip_file.extractall(staging)  # checks every member's CRC, so damage is caught here
        elif name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(archive) as tar_file:
                tar_file.extractall(staging, filter="data")  # "data": no paths outside staging, no devices
        elif name.endswith(".csv"):
            shutil.copyfile(archive, staging / "fer2013.csv")
        else:
            raise fer.DataError(f"{archive}: expected a .zip, .tar.gz or .csv file")
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as error:
        raise fer.DataError(f"{archive}: cannot unpack it ({error}); if the download is damaged or incomplete, "
                            f"download it again from {KAGGLE_URL}") from None


def download(staging, target):
    print(f"no local copy or archive found; downloading {KAGGLE_DATASET} with kagglehub")
    try:
        import kagglehub  # imported here: only this way needs it, the rest of the project works without it

        downloaded = kagglehub.dataset_download(KAGGLE_DATASET)
    except ImportError:
        raise fer.DataError(how_to_get_it("kagglehub is not installed (`make install` installs it).", target)) from None
    except Exception as error:  # offline, proxy, Kaggle down...: kagglehub raises many types, all mean "not this way"
        raise fer.DataError(how_to_get_it(f"kagglehub could not download {KAGGLE_DATASET}: "
                                          f"{type(error).__name__}: {error}", target)) from None
    # A copy, not a link: clearing kagglehub's cache (~/.cache/kagglehub) must not break data/fer2013.
    print(f"copying {downloaded} into {staging}")
    shutil.copytree(downloaded, staging, dirs_exist_ok=True)


def find_dataset(folder):
    """The folder holding train/ and test/ (or fer2013.csv), at the top or one or two levels down."""
    for candidate in [folder, *sorted(folder.glob("*/")), *sorted(folder.glob("*/*/"))]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            files = fer.list_image_folders(candidate)  # raises on unknown or empty class folders
            print(f"found {len(files['train'])} images in train/ and {len(files['test'])} in test/")
            return candidate
        if (candidate / "fer2013.csv").is_file():
            print(f"found {candidate / 'fer2013.csv'}")
            return candidate
    raise fer.DataError(f"{folder}: no train/ and test/ folders and no fer2013.csv inside; "
                        f"expected the FER-2013 download from {KAGGLE_URL}")


def get_fer2013(target, archive=None):
    """Make `target` hold a FER-2013 that loads, and return its splits (see the module docstring)."""
    if target.exists():
        print(f"{target} is already there; checking it" + (f" (so {archive} is not used)" if archive else ""))
        try:
            return fer.load_fer2013(target)
        except fer.DataError as error:
            raise fer.DataError(f"{error}\n{target} is there but does not load: fix it, or move it away "
                                f"and run `make data` again to replace it") from None
    archive = archive or find_archive(target.parent)
    staging = target.parent / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted run left behind
    staging.mkdir(parents=True)
    try:
        if archive:
            unpack(archive, staging)
        else:
            download(staging, target)
        dataset = find_dataset(staging)
        print(f"moving {dataset} to {target}")
        dataset.rename(target)  # atomic: target appears complete or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        return fer.load_fer2013(target)  # decodes every image once (and caches them)
    except fer.DataError:
        shutil.rmtree(target)  # this run put it there, and it must not pass for complete later
        raise


FERPLUS_URL = "https://raw.githubusercontent.com/microsoft/FERPlus/master/fer2013new.csv"
FERPLUS_FILE_COLUMNS = ["Usage", "Image name", *fer.FERPLUS_COLUMNS]
# Every Kaggle file with its fer2013.csv row (0-based), found once by matching pixels: FERPlus's images are
# fer2013.csv's pixels, Kaggle's files JPEG copies of them. The 177 files FER+ has no image for (their row's
# image name is blank in fer2013new.csv, or reused by a later row) are listed with an empty row.
ALIGNMENT = Path(__file__).resolve().parent / "data" / "ferplus_alignment.csv.gz"


def how_to_get_ferplus(reason, target):
    return (f"{reason}\nFER-2013 works without the FER+ votes. To add them, download {FERPLUS_URL}\n"
            f"and run `make data FERPLUS=path/to/fer2013new.csv` (or put it at {target.parent / fer.FERPLUS_CSV}).")


def download_ferplus():
    """FERPlus's fer2013new.csv, as text."""
    print(f"downloading {FERPLUS_URL}")
    with urllib.request.urlopen(FERPLUS_URL, timeout=30) as response:
        return response.read().decode("utf-8-sig")


def read_ferplus_csv(text, source, expected_rows):
    """The rows of a fer2013new.csv, checked: FERPlus's columns, and one row for each fer2013.csv row."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        missing = set(FERPLUS_FILE_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise fer.DataError(f"{source}: not FERPlus's fer2013new.csv; "
                                f"missing the columns {', '.join(sorted(missing))}")
        rows = list(reader)
    except csv.Error as error:
        raise fer.DataError(f"{source}: not a CSV text file ({error})") from None
    if len(rows) != expected_rows:
        raise fer.DataError(f"{source}: {len(rows)} rows, but fer2013.csv has {expected_rows}; "
                            f"fer2013new.csv must have one row for each of them, in the same order")
    return rows


def join_alignment(root, ferplus_rows):
    """The rows of ferplus_alignment.csv for the Kaggle-layout folder `root`: each image with its fer2013.csv
    row and that row's FER+ votes, through the shipped alignment; empty votes where there are none."""
    with gzip.open(ALIGNMENT, "rt", newline="") as file:
        row_of = {line["kaggle_path"]: line["fer2013_row"] for line in csv.DictReader(file)}
    files = fer.list_image_folders(root)
    joined = []
    for kaggle_path in sorted(path.relative_to(root).as_posix() for path, _ in files["train"] + files["test"]):
        usage, row = fer.usage_of(Path(kaggle_path)), row_of.get(kaggle_path, "")
        entry = ferplus_rows[int(row)] if row else {}
        if entry and entry["Usage"] != usage:  # a wrong file, or rows out of order, shows here
            raise fer.DataError(f"fer2013new.csv row {row} is {entry['Usage']}, but {kaggle_path}, aligned "
                                f"with it, is {usage}: this fer2013new.csv does not follow fer2013.csv's rows")
        if not entry.get("Image name", "").strip():
            entry = {}  # FER+ gave this row no image, so its votes mean nothing
        joined.append({"kaggle_path": kaggle_path, "usage": usage or "", "fer2013_row": row,
                       "ferplus_image_name": entry.get("Image name", ""),
                       **{column: entry.get(column, "") for column in fer.FERPLUS_COLUMNS}})
    unknown = sum(line["kaggle_path"] not in row_of for line in joined)
    if unknown:
        print(f"note: {unknown} of {len(joined)} images in {root} are not named as in Kaggle's {KAGGLE_DATASET}, "
              f"so they have no FER+ votes")
    return joined


def get_ferplus(target, data, ferplus=None):
    """Put FER+'s votes where fer.load_fer2013 finds them (see the module docstring); True if it wrote them."""
    kaggle_layout = (target / "train").is_dir()
    csv_file = target if target.is_file() else target / "fer2013.csv"
    destination = target / fer.FERPLUS_VOTES if kaggle_layout else csv_file.with_name(fer.FERPLUS_CSV)
    if destination.is_file():
        print(f"{destination} is already there; keeping it" + (f" (so {ferplus} is not used)" if ferplus else ""))
        return False
    if ferplus and not ferplus.is_file():
        raise fer.DataError(f"{ferplus}: no such file; expected FERPlus's fer2013new.csv")
    ferplus = ferplus or next((path for path in [target.parent / fer.FERPLUS_CSV] if path.is_file()), None)
    if ferplus:
        try:
            text, source = ferplus.read_text(encoding="utf-8-sig"), ferplus
        except UnicodeDecodeError:
            raise fer.DataError(f"{ferplus}: not a CSV text file; expected FERPlus's fer2013new.csv") from None
    else:
        try:
            text, source = download_ferplus(), FERPLUS_URL
        except (OSError, http.client.HTTPException) as error:  # offline, proxy, GitHub down: carry on without
            print(how_to_get_ferplus(f"note: no FER+ votes: cannot download them ({type(error).__name__}: {error}).",
                                     target))
            return False
    # The Kaggle layout goes through the alignment, made for the whole fer2013.csv, whatever subset is here.
    expected_rows = sum(PUBLISHED_SIZES) if kaggle_layout else sum(len(split["labels"]) for split in data.values())
    rows = read_ferplus_csv(text, source, expected_rows)
    if kaggle_layout:
        joined = join_alignment(target, rows)
        if not any(line["fer2013_row"] for line in joined):
            print(f"note: no FER+ votes: no image in {target} has a Kaggle file name the alignment knows")
            return False
        with open(f"{destination}.partial", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(joined[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(joined)
    else:
        Path(f"{destination}.partial").write_text(text)
    Path(f"{destination}.partial").rename(destination)  # in one step: a file there is complete
    print(f"wrote {destination} from {source}")
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=fer.DEFAULT_DATA, help="where the dataset goes (default: %(default)s)")
    parser.add_argument("--archive", type=lambda path: Path(path).expanduser(), default=None,
                        help="a downloaded archive.zip, fer2013.zip, fer2013.csv or .tar.gz (default: look in data/)")
    parser.add_argument("--ferplus", type=lambda path: Path(path).expanduser(), default=None,
                        help="FERPlus's fer2013new.csv, downloaded already (default: data/fer2013new.csv if it is "
                             "there, else download it)")
    args = parser.parse_args()
    try:
        data = get_fer2013(Path(args.data), args.archive)
        if get_ferplus(Path(args.data), data, args.ferplus):
            data = fer.load_fer2013(args.data)  # decodes again, now with the votes: training finds it in the cache
    except fer.DataError as error:
        sys.exit(f"error: {error}")
    for split, name in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        counts = torch.bincount(data[split]["labels"], minlength=len(fer.EMOTIONS)).tolist()
        print(f"{split:<5} ({name:<11}) {len(data[split]['labels']):>6} images: "
              + ", ".join(f"{emotion} {count}" for emotion, count in zip(fer.EMOTIONS, counts)))
    if "votes" in data["train"]:
        has_votes = {split: ~data[split]["votes"].isnan().any(1) for split in ("train", "val", "test")}
        print("FER+ votes for " + ", ".join(f"{int(voted.sum())} of {len(voted)} {split}"
                                            for split, voted in has_votes.items()) + " images")
    sizes = [len(data[split]["labels"]) for split in ("train", "val", "test")]
    if sizes != PUBLISHED_SIZES:
        print(f"note: the published split sizes are {', '.join(map(str, PUBLISHED_SIZES))}; this copy is a subset "
              f"or another version: usable, but its accuracies are not comparable with the README's")
    print(f"{args.data}: FER-2013 is ready")


if __name__ == "__main__":
    main()
