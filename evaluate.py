"""
Evaluate a trained run, or an ensemble of runs, on PrivateTest (default) or PublicTest, rebuilding each
model from its run's own config.json: accuracy, per-class precision / recall / F1, macro-F1, the confusion
matrix, test-time augmentation (flip, and ten shifted views), and accuracy on the test images that have
no copy in the training set.

    python evaluate.py --run runs/DIR                 # PrivateTest
    python evaluate.py --run runs/DIR --split val     # PublicTest, the split models are selected on
    python evaluate.py --run runs/A --run runs/B      # an ensemble: the mean of the runs' probabilities

Writes eval_<split>.json and confusion_<split>.png into the run folder (an ensemble: into --out,
by default a new runs/<time>-ensemble-<n> folder, with ensemble.json naming its members).
"""
import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import fer

SPLIT_NAMES = {"test": "PrivateTest", "val": "PublicTest"}


def pixel_hashes(images):
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images]


def not_in_train_mask(images, train_images):
    """True for each image with no pixel-identical copy in the training split (FER-2013 has ~8%)."""
    train_hashes = set(pixel_hashes(train_images))
    return torch.tensor([h not in train_hashes for h in pixel_hashes(images)], dtype=torch.bool)


def ensemble_probabilities(models, images, device, tta=False):
    """An ensemble's class probabilities for each view [V, N, 7]: the mean of its members' (any architectures)."""
    return torch.stack([fer.view_probabilities(model, images, device, tta=tta) for model in models]).mean(0)


def confusion_matrix(labels, predictions, num_classes=len(fer.EMOTIONS)):
    """counts[true, predicted]."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).view(num_classes, -1)


def classification_report(labels, predictions):
    """Accuracy, per-class precision / recall / F1 / support, and macro-F1."""
    counts = confusion_matrix(labels, predictions).double()
    true_positives = counts.diag()
    precision = true_positives / counts.sum(0).clamp(min=1)
    recall = true_positives / counts.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    per_class = {name: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
                        "support": int(counts[i].sum())} for i, name in enumerate(fer.EMOTIONS)}
    return {"accuracy": (true_positives.sum() / counts.sum()).item(), "macro_f1": f1.mean().item(),
            "per_class": per_class, "confusion": counts.long().tolist()}


def plot_confusion(counts, title, path):
    """Counts and row-normalised (recall per true class) confusion matrices side by side."""
    counts = torch.tensor(counts)
    normalised = counts / counts.sum(1, keepdim=True).clamp(min=1)
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, matrix, label in ((axes[0], counts, "images"), (axes[1], 100 * normalised, "% of true class")):
        image = ax.imshow(matrix.numpy(), cmap="Blues")
        for (row, column), value in zip(torch.cartesian_prod(torch.arange(7), torch.arange(7)).tolist(),
                                        matrix.flatten().tolist()):
            dark = value > matrix.max() * 0.6
            ax.text(column, row, f"{value:.0f}", ha="center", va="center",
                    color="white" if dark else "black", fontsize=9)
        ax.set_xticks(range(7), fer.EMOTIONS, rotation=45, ha="right")
        ax.set_yticks(range(7), fer.EMOTIONS)
        ax.set(xlabel="predicted", ylabel="true", title=label)
        figure.colorbar(image, ax=ax, fraction=0.046)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def view_report(labels, probabilities, unseen, ferplus=None):
    """Everything reported for one set of test-time views, from the class probabilities; with `ferplus`,
    also how often the prediction is the crowd's majority emotion: over the images that have one, and over
    those with a clear majority (more than half the votes), the images FERPlus's own test accuracy counts."""
    predictions = probabilities.argmax(1)
    report = classification_report(labels, predictions)
    confusion = torch.tensor(report["confusion"])
    report.update(confusion_row_normalised=(confusion / confusion.sum(1, keepdim=True).clamp(min=1)).tolist(),
                  accuracy_without_train_duplicates=(predictions[unseen] == labels[unseen]).float().mean().item())
    if ferplus is not None:
        majority, has_label, clear = ferplus
        ferplus = classification_report(majority[has_label], predictions[has_label])
        report.update(ferplus_accuracy=ferplus["accuracy"], ferplus_macro_f1=ferplus["macro_f1"],
                      ferplus_recall={name: row["recall"] for name, row in ferplus["per_class"].items()},
                      ferplus_clear_accuracy=(predictions[clear] == majority[clear]).float().mean().item())
    return report


def output_folder(args):
    """A single run's own folder; for an ensemble --out, or a new runs/<time>-ensemble-<n> folder."""
    if len(args.run) == 1:
        return Path(args.run[0])
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-ensemble-{len(args.run)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble.json").write_text(json.dumps({"members": args.run}, indent=2) + "\n")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, action="append", help="run folder written by a train_*.py "
                        "script; repeat it to evaluate the ensemble of several runs")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="test = PrivateTest, val = PublicTest (default: %(default)s)")
    parser.add_argument("--out", help="ensemble: folder for the results (default: runs/<time>-ensemble-<n>)")
    parser.add_argument("--data", default=fer.DEFAULT_DATA, help="Kaggle-layout folder or fer2013.csv "
                        "(default: $FER_DATA or %(default)s; the path in a run's config.json is only a record)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--single-view", action="store_true",
                        help="no test-time augmentation: one forward pass per image instead of ten")
    args = parser.parse_args()

    try:
        device = fer.pick_device(args.device)
        models, configs = zip(*(fer.load_run(run, device) for run in args.run))
        data = fer.load_fer2013(args.data, seed=configs[0]["seed"])
    except fer.DataError as error:
        sys.exit(f"error: {error}")
    images, labels = data[args.split]["images"], data[args.split]["labels"]
    unseen = not_in_train_mask(images, data["train"]["images"])
    # Reported numbers in float32 (training validates in bf16 for speed), as predict.py and gradcam.py compute.
    # The ten views hold the plain image first and its mirror first in their second half, so one pass over
    # them gives all three reports.
    per_view = ensemble_probabilities(models, images, device, tta=not args.single_view and "ten")
    chosen = {"single": per_view[:1]}
    if not args.single_view:
        chosen.update(flip=per_view[[0, len(per_view) // 2]], ten=per_view)
    votes = data[args.split].get("votes")
    ferplus = (*fer.ferplus_labels(votes)[1:], fer.ferplus_clear_majority(votes)) if votes is not None else None
    views = {name: view_report(labels, probabilities.mean(0), unseen, ferplus) for name, probabilities in chosen.items()}
    report = dict(views["single"], split=SPLIT_NAMES[args.split], images=len(labels), runs=args.run,
                  images_without_train_duplicate=int(unseen.sum()), test_time_views=views)
    if votes is not None:
        report.update(ferplus_images=int(ferplus[1].sum()), ferplus_clear_images=int(ferplus[2].sum()))
    for name, key in (("flip", "flip_tta"), ("ten", "ten_view_tta")):
        if name in views:
            report.update({f"accuracy_{key}": views[name]["accuracy"], f"macro_f1_{key}": views[name]["macro_f1"]})
    out = output_folder(args)
    (out / f"eval_{args.split}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion(report["confusion"], f"{out.name}: {report['split']}, accuracy {report['accuracy']:.2%}",
                   out / f"confusion_{args.split}.png")

    members = f"model from {out}" if len(args.run) == 1 else f"ensemble of {len(args.run)} runs: {', '.join(args.run)}"
    print(f"{report['split']} ({len(labels)} images), {members}")
    print(f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name, row in report["per_class"].items():
        print(f"{name:<10}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}{row['support']:>10}")
    for name, label in (("single", "single view"), ("flip", "flip TTA (2 views)"), ("ten", "ten-view TTA")):
        if name not in views:
            continue
        view = views[name]
        print(f"{label:<20} accuracy {view['accuracy']:.2%}   macro-F1 {view['macro_f1']:.3f}   "
              f"disgust recall {view['per_class']['disgust']['recall']:.1%}   "
              f"no copy in train {view['accuracy_without_train_duplicates']:.2%}"
              + (f"   FER+ majority {view['ferplus_accuracy']:.2%} (clear {view['ferplus_clear_accuracy']:.2%})"
                 if votes is not None else ""))
    print(f"({report['images_without_train_duplicate']} images have no copy in train"
          + (f"; {report['ferplus_images']} have a FER+ majority label, {report['ferplus_clear_images']} a clear "
             "one, held by more than half the votes: the images FERPlus's test accuracy counts)"
             if votes is not None else ")"))
    print(f"wrote {out / f'eval_{args.split}.json'} and {out / f'confusion_{args.split}.png'}")


if __name__ == "__main__":
    main()
