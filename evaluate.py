"""
Evaluate a trained run on PrivateTest (default) or PublicTest, rebuilding the model from the
run's own config.json: accuracy, per-class precision / recall / F1, macro-F1, the confusion matrix,
flip test-time augmentation, and accuracy on the test images that have no copy in the training set.

    python evaluate.py --run runs/DIR                 # PrivateTest
    python evaluate.py --run runs/DIR --split val     # PublicTest, the split models are selected on

Writes eval_<split>.json and confusion_<split>.png into the run folder.
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import fer

SPLIT_NAMES = {"test": "PrivateTest", "val": "PublicTest"}


def plot_confusion(counts, title, path):
    """Counts and row-normalised (recall per true class) confusion matrices side by side."""
    counts = torch.tensor(counts)
    normalised = counts / counts.sum(1, keepdim=True).clamp(min=1)
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, matrix, label in ((axes[0], counts, "images"), (axes[1], 100 * normalised, "% of true class")):
        image = ax.imshow(matrix, cmap="Blues")
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by train_baseline.py or train_transfer.py")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="test = PrivateTest, val = PublicTest (default: %(default)s)")
    parser.add_argument("--data", help="dataset location (default: the one the run was trained on)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    args = parser.parse_args()

    device = fer.pick_device(args.device)
    try:
        model, config = fer.load_run(args.run, device)
        data = fer.load_fer2013(args.data or config["data"], seed=config["seed"])
    except fer.DataError as error:
        sys.exit(f"error: {error}")
    images, labels = data[args.split]["images"], data[args.split]["labels"]
    # Reported numbers in float32 (training validates in bf16 for speed), as predict.py and gradcam.py compute.
    single = fer.evaluate(model, images, labels, device)
    flipped = fer.evaluate(model, images, labels, device, tta=True)
    predictions = single["probabilities"].argmax(1)
    report = fer.classification_report(labels, predictions)
    unseen = fer.not_in_train_mask(images, data["train"]["images"])
    report.update(
        split=SPLIT_NAMES[args.split], images=len(labels), accuracy_flip_tta=flipped["accuracy"],
        confusion_row_normalised=(torch.tensor(report["confusion"]) / torch.tensor(report["confusion"]).sum(
            1, keepdim=True).clamp(min=1)).tolist(),
        macro_f1_flip_tta=fer.classification_report(labels, flipped["probabilities"].argmax(1))["macro_f1"],
        images_without_train_duplicate=int(unseen.sum()),
        accuracy_without_train_duplicates=(predictions[unseen] == labels[unseen]).float().mean().item())

    run_dir = Path(args.run)
    (run_dir / f"eval_{args.split}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion(report["confusion"], f"{run_dir.name}: {report['split']}, accuracy {report['accuracy']:.2%}",
                   run_dir / f"confusion_{args.split}.png")

    print(f"{report['split']} ({len(labels)} images), model from {run_dir}")
    print(f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name, row in report["per_class"].items():
        print(f"{name:<10}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}{row['support']:>10}")
    print(f"accuracy {report['accuracy']:.2%}   macro-F1 {report['macro_f1']:.3f}")
    print(f"with flip TTA: accuracy {report['accuracy_flip_tta']:.2%}   macro-F1 {report['macro_f1_flip_tta']:.3f}")
    print(f"on the {report['images_without_train_duplicate']} images with no copy in train: "
          f"accuracy {report['accuracy_without_train_duplicates']:.2%}")
    print(f"wrote {run_dir / f'eval_{args.split}.json'} and {run_dir / f'confusion_{args.split}.png'}")


if __name__ == "__main__":
    main()
