"""
Grad-CAM for a trained run: where on the face the model found the evidence for its prediction.

    python gradcam.py                                   # the released model (runs/release)
    python gradcam.py --run runs/DIR                    # per-class grids and class-mean maps, PrivateTest
    python gradcam.py --run runs/DIR --image face.jpg   # explain one picture
    python gradcam.py --run runs/DIR --layer features.3 # another target layer (a named_modules name)

Writes into the run folder: gradcam_<emotion>.png (for each true class, its 4 most confident correct and
4 most confident wrong PrivateTest predictions), gradcam_class_means.png (the mean map of each class over
its correctly classified images, alone and over the class's mean face), or gradcam_image_<name>.png.
Every map explains the class the model predicted, at the last conv layer after its ReLU unless --layer
names another (for resnet18, --layer backbone.layer4 is the output of the last residual block).
"""
import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import fer

PER_ROW = 4  # correct and wrong examples shown for each class


def target_layer(model, name, run_dir):
    """(name, module) of the layer called `name`, or of the last conv when `name` is None."""
    layers = dict(model.named_modules())
    if name is None:
        last_conv = fer.last_conv_layer(model)
        return next((found, module) for found, module in layers.items() if module is last_conv)
    if name not in layers:
        convolutions = [found for found, module in layers.items() if isinstance(module, torch.nn.Conv2d)]
        raise fer.DataError(f"{run_dir}: the model has no layer {name!r}; its conv layers: {', '.join(convolutions)}")
    return name, layers[name]


def explain(model, images, layer, device, batch_size=256):
    """uint8 images [N, 48, 48] -> (probabilities [N, 7], Grad-CAM maps [N, 48, 48] of the predicted class)."""
    probabilities = fer.predict_probabilities(model, images, device)
    cams = []
    for start in range(0, len(images), batch_size):
        batch = fer.as_model_input(images[start:start + batch_size].to(device))
        cams.append(fer.grad_cam(model, batch, probabilities[start:start + batch_size].argmax(1), layer).cpu())
        print(f"\rgrad-cam: {min(start + batch_size, len(images))}/{len(images)} images", end="", flush=True)
    print()
    return probabilities, torch.cat(cams)


def show(axes, face, cam, title):
    axes.imshow(face.numpy(), cmap="gray")  # contrast-stretched: the blurry mean faces need it
    if cam is not None:
        axes.imshow(cam.numpy(), cmap="jet", alpha=0.4, vmin=0, vmax=1)
    axes.set_title(title, fontsize=8)
    axes.axis("off")


def save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_class_grid(emotion, images, labels, probabilities, cams, path):
    """Row 1: the most confident correct predictions for this true class; row 2: the most confident wrong ones."""
    confidence, predicted = probabilities.max(1)
    figure, axes = plt.subplots(2, PER_ROW, figsize=(2 * PER_ROW, 5.2))
    for empty in axes.flat:  # fewer than PER_ROW examples leave blank panels
        empty.axis("off")
    label = fer.EMOTIONS.index(emotion)
    for row, is_correct in enumerate((True, False)):
        members = ((labels == label) & ((predicted == label) == is_correct)).nonzero().flatten()
        chosen = members[confidence[members].argsort(descending=True, stable=True)[:PER_ROW]].tolist()
        for column, i in enumerate(chosen):
            show(axes[row, column], images[i], cams[i],
                 f"true {emotion}\npred {fer.EMOTIONS[predicted[i]]} {confidence[i]:.0%}")
    figure.suptitle(f"{emotion}: most confident correct (top) and wrong (bottom); maps explain the prediction")
    save(figure, path)


def plot_class_means(images, labels, probabilities, cams, title, path):
    """Mean map of each class over its correctly classified images, alone and over the class's mean face
    (of all its images: a mean of a few faces, such as disgust's few correct ones, would still show a face)."""
    figure, axes = plt.subplots(2, len(fer.EMOTIONS), figsize=(2 * len(fer.EMOTIONS), 5))
    correct = probabilities.argmax(1) == labels
    for label, emotion in enumerate(fer.EMOTIONS):
        members = correct & (labels == label)
        if not members.any():
            show(axes[0, label], torch.zeros(48, 48), None, f"{emotion}: none correct")
            axes[1, label].axis("off")
            continue
        mean_cam, mean_face = cams[members].mean(0), images[labels == label].float().mean(0)
        axes[0, label].imshow(mean_cam.numpy(), cmap="jet", vmin=0, vmax=1)
        axes[0, label].set_title(f"{emotion} (n={int(members.sum())})", fontsize=9)
        axes[0, label].axis("off")
        show(axes[1, label], mean_face, mean_cam, f"over the mean {emotion} face")
    figure.suptitle(title)
    save(figure, path)


def plot_single_image(face, probabilities, cam, path):
    figure, (face_axes, cam_axes, bar_axes) = plt.subplots(1, 3, figsize=(10, 3.4))
    predicted = probabilities.argmax().item()
    show(face_axes, face, None, "input, 48x48 grayscale")
    show(cam_axes, face, cam, f"Grad-CAM of {fer.EMOTIONS[predicted]} ({probabilities[predicted]:.0%})")
    bar_axes.barh(fer.EMOTIONS, probabilities.tolist())
    bar_axes.invert_yaxis()
    bar_axes.set(xlim=(0, 1), title="probabilities")
    save(figure, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=fer.RELEASED_RUN, help="run folder written by train_baseline.py "
                        "or train_transfer.py (default: runs/release, the released model)")
    parser.add_argument("--image", help="explain this picture instead of the PrivateTest images")
    parser.add_argument("--layer", help="target layer, a name from model.named_modules() "
                        "(default: the last conv, after its ReLU)")
    parser.add_argument("--data", help="dataset location (default: the one the run was trained on)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    args = parser.parse_args()

    device, run_dir = fer.pick_device(args.device), Path(args.run)
    try:
        model, config = fer.load_run(run_dir, device)
        layer_name, layer = target_layer(model, args.layer, run_dir)
        layer_name += f" ({type(layer).__name__})"
        if args.image:
            face = fer.read_image(args.image)
        else:
            data = fer.load_fer2013(args.data or config["data"], seed=config["seed"])
    except fer.DataError as error:
        sys.exit(f"error: {error}")

    if args.image:
        probabilities, cams = explain(model, face[None], layer, device)
        path = run_dir / f"gradcam_image_{Path(args.image).stem}.png"
        plot_single_image(face, probabilities[0], cams[0], path)
        print(f"{args.image}: {fer.EMOTIONS[probabilities[0].argmax()]} ({probabilities[0].max():.0%}); wrote {path}")
        return
    images, labels = data["test"]["images"], data["test"]["labels"]
    print(f"Grad-CAM of layer {layer_name} on PrivateTest ({len(labels)} images), model from {run_dir}")
    probabilities, cams = explain(model, images, layer, device)
    for emotion in fer.EMOTIONS:
        plot_class_grid(emotion, images, labels, probabilities, cams, run_dir / f"gradcam_{emotion}.png")
    plot_class_means(images, labels, probabilities, cams, f"{run_dir.name}\nmean Grad-CAM of layer {layer_name} "
                     f"over each class's correctly classified PrivateTest images", run_dir / "gradcam_class_means.png")
    print(f"wrote gradcam_<emotion>.png for {len(fer.EMOTIONS)} classes and gradcam_class_means.png into {run_dir}")


if __name__ == "__main__":
    main()
