"""Checks against the real FER-2013, when FER_DATA names a copy (.ci/run points it at the CI machine's copy)."""
import os
from pathlib import Path

import pytest
import torch

import evaluate
import fer

REAL_DATA = os.environ.get("FER_DATA")
pytestmark = pytest.mark.skipif(not REAL_DATA or not Path(REAL_DATA).exists(), reason="FER_DATA names no real copy")

# From the dataset README: per-class counts of train/ and of test/ (PublicTest + PrivateTest).
TRAIN_COUNTS = [3995, 436, 4097, 7215, 4830, 3171, 4965]
TEST_COUNTS = [958, 111, 1024, 1774, 1247, 831, 1233]


def test_real_fer2013_has_the_published_split_sizes_and_class_counts():
    data = fer.load_fer2013(REAL_DATA)
    assert [len(data[split]["labels"]) for split in ("train", "val", "test")] == [28709, 3589, 3589]
    assert torch.bincount(data["train"]["labels"]).tolist() == TRAIN_COUNTS
    test_counts = torch.bincount(data["val"]["labels"]) + torch.bincount(data["test"]["labels"])
    assert test_counts.tolist() == TEST_COUNTS
    # README: 288 PrivateTest images have an identical copy in Training
    assert (~evaluate.not_in_train_mask(data["test"]["images"], data["train"]["images"])).sum() == 288
