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

    python get_data.py [--data PATH] [--archive FILE]
"""
import argparse
import shutil
import sys
import tarfile
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=fer.DEFAULT_DATA, help="where the dataset goes (default: %(default)s)")
    parser.add_argument("--archive", type=Path, default=None,
                        help="a downloaded archive.zip, fer2013.zip, fer2013.csv or .tar.gz (default: look in data/)")
    args = parser.parse_args()
    try:
        data = get_fer2013(Path(args.data), args.archive)
    except fer.DataError as error:
        sys.exit(f"error: {error}")
    for split, name in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        counts = torch.bincount(data[split]["labels"], minlength=len(fer.EMOTIONS)).tolist()
        print(f"{split:<5} ({name:<11}) {len(data[split]['labels']):>6} images: "
              + ", ".join(f"{emotion} {count}" for emotion, count in zip(fer.EMOTIONS, counts)))
    sizes = [len(data[split]["labels"]) for split in ("train", "val", "test")]
    if sizes != PUBLISHED_SIZES:
        print(f"note: the published split sizes are {', '.join(map(str, PUBLISHED_SIZES))}; this copy is a subset "
              f"or another version: usable, but its accuracies are not comparable with the README's")
    print(f"{args.data}: FER-2013 is ready")


if __name__ == "__main__":
    main()
