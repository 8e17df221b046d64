"""Product text speaks of the product: every tracked text file (code, comments, help strings, README, docs,
Makefile, the released model's card) is free of machine-local paths and of words about how the project was
made. .ci/run is the one file that knows the CI machine's layout, and this file spells out the words."""
import re
import subprocess

import pytest

import release
from conftest import PROJECT_DIR

NOT_PRODUCT_TEXT = {".ci/run", "tests/test_product_text.py"}


def tracked_text_files():
    """(path, text) of every file git tracks that decodes as UTF-8 text without NUL bytes."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_DIR, capture_output=True, check=True).stdout
    files = []
    for name in names.decode().split("\0"):
        path = PROJECT_DIR / name
        if not name or name in NOT_PRODUCT_TEXT or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary: images, checkpoints
        try:
            files.append((name, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return files


def hits(pattern, files=None):
    """'path:line: text' for every line of the tracked text files that matches `pattern`."""
    found = []
    for name, text in files if files is not None else tracked_text_files():
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                found.append(f"{name}:{number}: {line.strip()[:160]}")
    return found


def test_the_tracked_files_are_found():
    names = {name for name, _ in tracked_text_files()}
    assert {"README.md", "fer.py", "Makefile", "runs/release/RELEASE.md"} <= names
    assert "runs/release/best.pt" not in names and ".ci/run" not in names


def test_no_machine_local_paths():
    # A path of one machine means nothing in a clone; where data and weights are comes from FER_DATA and
    # FER_WEIGHTS (set by .ci/run on the CI machine) or the command line.
    assert hits(re.compile(r"\.\./shared|/work/|/root/|/home/")) == []


def test_no_sessions():
    # onnxruntime's InferenceSession and SessionOptions are an API, not a word (\b keeps them out), and so is
    # the session object they make: `session = onnxruntime.InferenceSession(...)`, `session.run(...)`.
    api = re.compile(r"\bsession(?=\.run\(|\s*=\s*onnxruntime\.InferenceSession\()")
    files = [(name, api.sub("", text)) for name, text in tracked_text_files()]
    assert hits(re.compile(r"\bsessions?\b", re.IGNORECASE), files) == []


def test_no_numbered_rounds_of_work():
    ordinals = ("seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|fourteenth|fifteenth|sixteenth|"
                "seventeenth|eighteenth|nineteenth|twentieth")
    pattern = re.compile(rf"\b(?:{ordinals})\b(?! of a)|\b(?:first|second|third|fourth|fifth|sixth)[- ]round\b",
                         re.IGNORECASE)
    assert hits(pattern) == []


def test_no_issues_or_probes():
    assert hits(re.compile(r"\bissues?\b|\bprobes?\b", re.IGNORECASE)) == []


def test_the_original_project_is_not_called_the_seed():
    # "seed" is a random seed here; the project the baseline comes from is "the original project".
    pattern = re.compile(r"\bseed(?:'s)? (?:recipe|network|project|pipeline|style|augmentation|claim|own)\b"
                         r"|\bthe seed's (?!luck)", re.IGNORECASE)
    assert hits(pattern) == []


def test_readme_and_docs_name_no_run_folder_a_clone_lacks():
    # Only runs/release is committed; other runs are described by the command that makes them.
    docs = [(name, text) for name, text in tracked_text_files() if name == "README.md" or name.startswith("docs/")]
    assert hits(re.compile(r"\b20\d{6}-\d{6}-"), docs) == []


@pytest.mark.parametrize("data", ["/somewhere/fer2013", "data/fer2013.csv"])
def test_the_release_training_command_names_no_data_path(data):
    # The command in RELEASE.md trains on $FER_DATA or data/fer2013 wherever it is pasted.
    command = release.training_command({"arch": "vggnet", "data": data, "epochs": 64})
    assert "--data" not in command and data not in command
