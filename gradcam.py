"""
Grad-CAM for a trained run: where on the face the model found the evidence for its prediction.

    python gradcam.py                                   # the released model (runs/release)
    python gradcam.py --run runs/DIR                    # per-class grids and class-mean maps, PrivateTest
    python gradcam.py --run runs/DIR --image photo.jpg  # explain the faces in one picture
    python gradcam.py --image crop.png --no-detect      # a picture that is already a face crop
    python gradcam.py --run runs/DIR --layer features.3 # another target layer (a named_modules name)

Writes into --out (default: gradcam/<run folder name>/, created if needed; never into the run folder):
gradcam_<emotion>.png (for each true class, its 4 most confident correct and 4 most confident wrong
PrivateTest predictions), gradcam_class_means.png (the mean map of each class over its correctly
classified images, alone and over the class's mean face), or gradcam_image_<name>.png (a row per face).
The PrivateTest images come from --data, else $FER_DATA, else data/fer2013: the path in a run's config
records where it was trained, on whatever machine that was. --image finds the faces as predict.py does,
with OpenCV (make install-predict). Every map explains the class the model predicted, at the last conv
layer after its ReLU unless --layer names another (for resnet18, --layer backbone.layer4 is the output
of the last residual block).
"""
import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import fer
import predict

PER_ROW = 4  # correct and wrong examples shown for each class


# -----------------------------------------------------------------------------
# Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class was found


def last_conv_layer(model):
    """The default target, found the same way in any network: the last nn.Conv2d in module order
    (its maps are the most class-specific ones that still have a layout), taken after the ReLU that
    directly follows it (after a BatchNorm, if any) when there is one. A max-pool in between (VGGNet
    pools before its last BatchNorm) keeps the conv itself: its 6x6 map, not the pooled 3x3.

    Rectified maps, as in the Grad-CAM paper: the ReLU zeroes a negative pre-activation, so it cannot
    lower a score, yet it would pull the map down (39% of the baseline's maps of the conv itself came
    out all zero, none of its ReLU's)."""
    modules = list(model.modules())
    positions = [i for i, module in enumerate(modules) if isinstance(module, nn.Conv2d)]
    if not positions:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d; name a target layer")
    for following in modules[positions[-1] + 1:positions[-1] + 3]:
        if isinstance(following, (nn.ReLU, nn.ReLU6)):
            return following
        if not isinstance(following, nn.BatchNorm2d):
            break
    return modules[positions[-1]]


def grad_cam(model, images, classes=None, layer=None):
    """Grad-CAM maps [B, H, W] in [0, 1] for float images [B, C, H, W]: where the output of `layer`
    (default: last_conv_layer) raised the score of `classes` (default: each image's predicted class).

    Each channel is weighted by the spatial mean of the class score's gradient; the map is the ReLU
    of the weighted sum of channels, upsampled (bilinear) to the image size, divided by its maximum."""
    model.eval()  # no dropout: explain the prediction the model really makes
    layer = layer or last_conv_layer(model)
    outputs = []

    def keep_output(module, inputs, output):
        outputs.append(output)
        # Hand the rest of the network a copy: an in-place ReLU after the layer (as after every conv
        # of BaselineCNN) would otherwise overwrite the kept tensor, and the map of a conv would
        # silently become the map of its ReLU.
        return output.clone()

    # The input requires grad so the activations do too, also in a model with frozen layers.
    images = images.detach().requires_grad_(True)
    handle = layer.register_forward_hook(keep_output)
    try:
        with torch.enable_grad():
            logits = model(images)
    finally:
        handle.remove()  # never leave a hook behind, even when the forward pass raises
    if len(outputs) != 1:
        raise ValueError(f"the target layer ran {len(outputs)} times in one forward pass; expected once")
    activations = outputs[0]
    classes = logits.argmax(1) if classes is None else torch.as_tensor(classes, device=logits.device)
    # In eval mode images do not interact, so the gradient of the summed scores is each image's own.
    # autograd.grad rather than a backward hook: it stops at the layer, leaves the parameters' .grad
    # alone, and works with in-place ops (a full backward hook raises on the in-place ReLU).
    score = logits.gather(1, classes.view(-1, 1)).sum()
    [gradients] = torch.autograd.grad(score, activations)
    weights = gradients.mean((2, 3), keepdim=True)
    cams = F.relu((weights * activations).sum(1, keepdim=True)).detach()
    cams = F.interpolate(cams, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cams / cams.amax((1, 2), keepdim=True).clamp(min=1e-12)


# -----------------------------------------------------------------------------
# The script: a run's PrivateTest maps, or the faces of one picture


def target_layer(model, name, run_dir):
    """(name, module) of the layer called `name`, or of the last conv when `name` is None."""
    layers = dict(model.named_modules())
    if name is None:
        last_conv = last_conv_layer(model)
        return next((found, module) for found, module in layers.items() if module is last_conv)
    if name not in layers:
        convolutions = [found for found, module in layers.items() if isinstance(module, nn.Conv2d)]
        raise fer.DataError(f"{run_dir}: the model has no layer {name!r}; its conv layers: {', '.join(convolutions)}")
    return name, layers[name]


def explain(model, images, layer, device, batch_size=256):
    """uint8 images [N, 48, 48] -> (probabilities [N, 7], Grad-CAM maps [N, 48, 48] of the predicted class)."""
    probabilities = fer.predict_probabilities(model, images, device)
    cams = []
    for start in range(0, len(images), batch_size):
        batch = fer.as_model_input(images[start:start + batch_size].to(device))
        cams.append(grad_cam(model, batch, probabilities[start:start + batch_size].argmax(1), layer).cpu())
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


def faces_in_picture(path, detect):
    """(uint8 face crops [N, 48, 48], their boxes): the faces predict.py finds in the picture at `path`,
    cropped as it crops them; with detect=False the whole picture is one face crop. A whole photo shrunk
    to 48x48 would show the model a face a few pixels wide."""
    image = predict.open_image(Path(path))
    boxes = (predict.find_faces(predict.load_face_detector(), image, predict.PHOTO_DETECT_SIDE) if detect
             else [[0, 0, image.width, image.height]])
    if not boxes:
        raise fer.DataError(f"{path}: no face found (for an image that is already a face crop, pass --no-detect)")
    return predict.crop_faces(image, boxes), boxes


def plot_faces(faces, boxes, probabilities, cams, path):
    """A row per face: the 48x48 crop the model sees, its Grad-CAM, its seven probabilities."""
    figure, axes = plt.subplots(len(faces), 3, figsize=(10, 3.4 * len(faces)), squeeze=False)
    for i, (face_axes, cam_axes, bar_axes) in enumerate(axes):
        predicted = probabilities[i].argmax().item()
        show(face_axes, faces[i], None, f"box {boxes[i]}, as 48x48 grayscale")
        show(cam_axes, faces[i], cams[i], f"Grad-CAM of {fer.EMOTIONS[predicted]} ({probabilities[i, predicted]:.0%})")
        bar_axes.barh(fer.EMOTIONS, probabilities[i].tolist())
        bar_axes.invert_yaxis()
        bar_axes.set(xlim=(0, 1), title="probabilities")
    save(figure, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=fer.RELEASED_RUN, help="run folder written by train_baseline.py "
                        "or train_transfer.py (default: runs/release, the released model)")
    parser.add_argument("--image", help="explain the faces in this picture instead of the PrivateTest images")
    parser.add_argument("--no-detect", action="store_true", help="the --image is already a face crop, "
                        "like FER-2013's: explain it whole, without searching it for faces")
    parser.add_argument("--layer", help="target layer, a name from model.named_modules() "
                        "(default: the last conv, after its ReLU)")
    parser.add_argument("--data", default=fer.DEFAULT_DATA, help="dataset folder or fer2013.csv for the "
                        "PrivateTest maps (default: $FER_DATA, else data/fer2013)")
    parser.add_argument("--out", type=Path, help="folder for the pictures (default: gradcam/<run folder name>)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    args = parser.parse_args()

    run_dir = Path(args.run)
    out = args.out or Path("gradcam") / run_dir.resolve().name
    try:
        device = fer.pick_device(args.device)
        model, config = fer.load_run(run_dir, device)
        layer_name, layer = target_layer(model, args.layer, run_dir)
        layer_name += f" ({type(layer).__name__})"
        if args.image:
            faces, boxes = faces_in_picture(args.image, detect=not args.no_detect)
        else:
            data = fer.load_fer2013(args.data, seed=config["seed"])
        out.mkdir(parents=True, exist_ok=True)
    except (fer.DataError, OSError) as error:
        sys.exit(f"error: {error}")

    if args.image:
        probabilities, cams = explain(model, faces, layer, device)
        path = out / f"gradcam_image_{Path(args.image).stem}.png"
        plot_faces(faces, boxes, probabilities, cams, path)
        for box, face_probabilities in zip(boxes, probabilities):
            print(f"{args.image}: face at {box}: {fer.EMOTIONS[face_probabilities.argmax()]} "
                  f"({face_probabilities.max():.0%})")
        print(f"wrote {path}")
        return
    images, labels = data["test"]["images"], data["test"]["labels"]
    print(f"Grad-CAM of layer {layer_name} on PrivateTest ({len(labels)} images), model from {run_dir}")
    probabilities, cams = explain(model, images, layer, device)
    for emotion in fer.EMOTIONS:
        plot_class_grid(emotion, images, labels, probabilities, cams, out / f"gradcam_{emotion}.png")
    plot_class_means(images, labels, probabilities, cams, f"{run_dir.resolve().name}\nmean Grad-CAM of layer "
                     f"{layer_name} over each class's correctly classified PrivateTest images",
                     out / "gradcam_class_means.png")
    print(f"wrote gradcam_<emotion>.png for {len(fer.EMOTIONS)} classes and gradcam_class_means.png into {out}")


if __name__ == "__main__":
    main()
