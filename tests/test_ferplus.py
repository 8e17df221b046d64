"""FER+ crowd votes: read beside either layout, turned into labels, trained on, and reported."""
import csv
import json
import math

import pytest
import torch

import fer
from conftest import run_script, training_config, write_fer2013_csv, write_kaggle_folder

VOTE_COLUMNS = fer.FERPLUS_COLUMNS


def votes_for(label, index):
    """Ten votes for a synthetic image of FER-2013 class `label`: mostly that emotion, the crowd's other
    choices around it; every fourth image's crowd prefers neutral (FER+ and FER-2013 disagree), with only half
    the votes, so without a clear majority unless the face is neutral."""
    votes = dict.fromkeys(VOTE_COLUMNS, 0)
    emotion = VOTE_COLUMNS[fer.FERPLUS_EMOTIONS[label]]
    if index % 4 == 3:
        votes.update(neutral=5)
        votes[emotion] += 3
    else:
        votes[emotion] += 8
        votes["unknown"] += 1
    votes["contempt"] += 10 - sum(votes.values())  # the rest: a class FER-2013 does not have
    return votes


def write_alignment(root, skip=()):
    """ROOT/ferplus_alignment.csv for every image under ROOT, as `make data` writes it; names in `skip` get no votes."""
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    with open(root / fer.FERPLUS_VOTES, "w", newline="") as file:
        writer = csv.DictWriter(file, ["kaggle_path", "usage", "fer2013_row"] + VOTE_COLUMNS)
        writer.writeheader()
        for path in paths:
            label, index = fer.EMOTIONS.index(path.split("/")[1]), int(path[-8:-4])
            votes = {} if path.split("/")[-1] in skip else votes_for(label, index)
            writer.writerow({"kaggle_path": path, "usage": path.split("/")[-1].split("_")[0], **votes})


def test_votes_are_read_beside_a_kaggle_folder_and_matched_by_file_name(tmp_path):
    root = write_kaggle_folder(tmp_path / "fer2013")
    write_alignment(root, skip={"PrivateTest_60001.png"})
    data = fer.load_fer2013(root)
    happy = data["train"]["votes"][data["train"]["labels"] == 3]
    assert happy[0, VOTE_COLUMNS.index("happiness")] == 8 and happy[0].sum() == 10
    # the one image without FER+ votes holds NaN, and only that one
    missing = data["test"]["votes"].isnan().all(1)
    assert missing.sum() == 1 and data["test"]["labels"][missing].item() == 6


def test_votes_beside_fer2013_csv_are_joined_by_row(tmp_path):
    path = write_fer2013_csv(tmp_path / "fer2013.csv", per_usage={"Training": 2, "PublicTest": 1, "PrivateTest": 1})
    rows = list(csv.DictReader(open(path)))
    with open(tmp_path / fer.FERPLUS_CSV, "w", newline="") as file:
        writer = csv.DictWriter(file, ["Usage", "Image name"] + VOTE_COLUMNS)
        writer.writeheader()
        for number, row in enumerate(rows):
            # row 0 has no FER+ image (FER+ left some names blank): no votes
            writer.writerow({"Usage": row["Usage"], "Image name": f"fer{number:07d}.png" if number else "",
                             **votes_for(int(row["emotion"]), number)})
    data = fer.load_fer2013(path)
    assert data["train"]["votes"][0].isnan().all()
    distribution, majority, has_label = fer.ferplus_labels(data["train"]["votes"])
    # rows 1, 2 (labels 0, 0 ... in CSV order) carry their own row's votes: anger for an angry face
    assert majority[1].item() == 0 and has_label[1:].all()
    assert majority[3].item() == fer.EMOTIONS.index("neutral")  # row 3: the crowd prefers neutral


def test_ferplus_labels_drop_single_votes_and_classes_outside_the_seven():
    votes = torch.tensor([
        # neutral happy surprise sad anger disgust fear contempt unknown NF
        [4, 0, 0, 5, 1, 0, 0, 0, 0, 0],   # sad 5, neutral 4; the single anger vote is dropped
        [0, 0, 0, 0, 1, 0, 0, 6, 2, 1],   # nothing of the seven with 2 votes or more: no label
        [math.nan] * 10,                  # no FER+ entry: no label
        [3, 0, 3, 0, 0, 0, 0, 0, 4, 0],   # a tie goes to the emotion first in EMOTIONS (surprise)
        [5, 0, 0, 0, 0, 0, 0, 0, 3, 2],   # neutral, but with only half the votes: no clear majority
    ], dtype=torch.float32)
    distribution, majority, has_label = fer.ferplus_labels(votes)
    assert has_label.tolist() == [True, False, False, True, True]
    # a clear majority: more than half of all votes left, contempt, unknown and not-a-face counted
    assert fer.ferplus_clear_majority(votes).tolist() == [True, False, False, False, False]
    sad, neutral, surprise = (fer.EMOTIONS.index(name) for name in ("sad", "neutral", "surprise"))
    assert majority[0] == sad and majority[3] == surprise
    assert distribution[0, sad] == pytest.approx(5 / 9) and distribution[0, neutral] == pytest.approx(4 / 9)
    assert distribution[0].sum() == pytest.approx(1.0) and distribution[1].sum() == 0


def test_soft_label_training_minimises_cross_entropy_against_the_vote_distribution():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (32, 48, 48), dtype=torch.uint8)
    targets = torch.softmax(torch.randn(32, 7), 1)
    labels = targets.argmax(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7))
    config = training_config(batch_size=32, lr=0.0, flip=False, rotate=0.0, zoom=0.0, translate=0.0, jitter=0.0)
    loss_function = torch.nn.CrossEntropyLoss(label_smoothing=0.0)
    optimizer = fer.make_optimizer(model, dict(config, backbone_lr_scale=1.0))
    loss_sum, _, seen, _ = fer.train_one_epoch(model, optimizer, loss_function, images, labels, config, epoch=1,
                                               progress={"plateau_factor": 1.0}, targets=targets)
    # by hand: - sum_c p_c log softmax(z)_c, averaged over the images (the learning rate is 0: the model stays put)
    logits = model(images.unsqueeze(1).float() / 255)
    by_hand = -(targets * torch.log_softmax(logits, 1)).sum(1).mean()
    assert seen == 32 and loss_sum / seen == pytest.approx(by_hand.item(), rel=1e-5)


def test_training_on_ferplus_records_its_labels_and_evaluation_reports_ferplus_accuracy(tmp_path):
    root = write_kaggle_folder(tmp_path / "fer2013", per_usage={"Training": 4, "PublicTest": 4, "PrivateTest": 4})
    write_alignment(root)
    run = tmp_path / "run"
    trained = run_script("train_baseline.py", "--data", str(root), "--labels", "ferplus", "--epochs", "1",
                         "--width", "8", "--batch-size", "8", "--run-dir", str(run), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((run / "config.json").read_text())["labels"] == "ferplus"
    evaluated = run_script("evaluate.py", "--run", str(run), "--data", str(root), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "FER+ majority" in evaluated.stdout
    report = json.loads((run / "eval_test.json").read_text())
    # the FER+ score counts agreement with the crowd's majority, which differs from the folder's label for
    # every fourth image (the crowd prefers neutral), so the two accuracies are computed apart
    data = fer.load_fer2013(root)
    _, majority, _ = fer.ferplus_labels(data["test"]["votes"])
    assert (majority != data["test"]["labels"]).sum() == 6 and report["ferplus_images"] == 28
    clear = fer.ferplus_clear_majority(data["test"]["votes"])
    assert report["ferplus_clear_images"] == 22 and not clear[majority != data["test"]["labels"]].any()
    model, _ = fer.load_run(run, torch.device("cpu"))
    predictions = fer.predict_probabilities(model, data["test"]["images"], torch.device("cpu")).argmax(1)
    assert report["ferplus_accuracy"] == pytest.approx((predictions == majority).float().mean().item())
    assert report["ferplus_clear_accuracy"] == pytest.approx((predictions == majority)[clear].float().mean().item())
    assert report["accuracy"] == pytest.approx((predictions == data["test"]["labels"]).float().mean().item())
    assert set(report["test_time_views"]["ten"]) >= {"ferplus_accuracy", "ferplus_macro_f1"}
    assert set(report["ferplus_recall"]) == set(fer.EMOTIONS)


def test_ferplus_labels_without_votes_is_one_clear_error(tmp_path):
    root = write_kaggle_folder(tmp_path / "fer2013", per_usage={"Training": 1, "PublicTest": 1, "PrivateTest": 1})
    result = run_script("train_baseline.py", "--data", str(root), "--labels", "ferplus", "--epochs", "1",
                        "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("error: --labels ferplus: no FER+ votes")
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
