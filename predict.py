"""
Find the faces in photos and name the emotion each one shows, with a model trained by train_*.py.

    python predict.py --run runs/DIR photo.jpg group.png     # OpenCV finds the faces (make install-predict)
    python predict.py --run runs/DIR --no-detect face.png    # the image is already a face crop, like FER-2013's
    python predict.py --run runs/DIR --tta --out annotated/ photo.jpg

Prints one JSON object per face: the image, the face's box [left, top, width, height] in pixels, the
top emotion and all seven probabilities. Writes an annotated copy of each image as <name>.emotions.png,
next to it or into --out: per face a box, a label and a bar split into the seven probabilities.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

import fer

# FER-2013's crops are about 4% wider than OpenCV's Haar box around the same face (median over 240 training
# faces, enlarged and pasted into a canvas), so each side of a box grows by 2% before cropping. More hurts:
# on 726 such PrivateTest faces the baseline scores 56.7% with 2%, 57.7% with none, 53.2% with 10% per side.
MARGIN = 0.02
# One colour per emotion (from matplotlib's tab10), for the boxes, the labels and the probability bars.
COLOURS = dict(zip(fer.EMOTIONS, ["#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f"]))
HOW_TO_INSTALL_OPENCV = ("face detection needs OpenCV: run `make install-predict` (or .venv/bin/pip install -r "
                         "requirements-predict.txt), or pass --no-detect for images that are already face crops")


def open_image(path):
    """The picture at `path`, turned upright as the camera's EXIF orientation says, in its own mode."""
    if not path.is_file():
        raise fer.DataError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image)  # a loaded copy, still usable once the file is closed
    except OSError as error:  # PIL's UnidentifiedImageError is an OSError too
        raise fer.DataError(f"{path}: cannot decode this file as an image ({error})") from None


def load_face_detector():
    import cv2  # optional: only face detection needs OpenCV

    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


def find_faces(detector, image):
    """Boxes [left, top, width, height] of the frontal faces in `image`, widened by MARGIN, left to right."""
    boxes = detector.detectMultiScale(np.asarray(image.convert("L")), scaleFactor=1.1, minNeighbors=5)
    widened = []
    for left, top, width, height in sorted(np.asarray(boxes).reshape(-1, 4).tolist()):  # () when none found
        pad = round(MARGIN * width)
        right, bottom = min(image.width, left + width + pad), min(image.height, top + height + pad)
        left, top = max(0, left - pad), max(0, top - pad)
        widened.append([left, top, right - left, bottom - top])
    return widened


def crop_faces(image, boxes):
    """uint8 [N, 48, 48]: each box cut out of `image` and prepared exactly like the training images."""
    return torch.stack([fer.prepare_face(image.crop((left, top, left + width, top + height)))
                        for left, top, width, height in boxes])


def classify(model, image, boxes, device, tta):
    probabilities = fer.predict_probabilities(model, crop_faces(image, boxes), device, tta=tta)
    return [{"box": box, "emotion": fer.EMOTIONS[face.argmax()],
             "probabilities": {name: round(p, 4) for name, p in zip(fer.EMOTIONS, face.tolist())}}
            for box, face in zip(boxes, probabilities)]


def annotate(image, faces):
    """An RGB copy of `image` with each face's box, label and a bar split into its seven probabilities,
    over a strip that says which colour is which emotion."""
    scale = math.ceil(480 / image.width)  # blow up narrow images, such as 48x48 crops, so the labels fit and read
    picture = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    font = ImageFont.load_default(size=picture.width // 40)
    canvas = Image.new("RGB", (picture.width, picture.height + 2 * font.size), "white")
    canvas.paste(picture)
    draw = ImageDraw.Draw(canvas)
    for face in faces:
        left, top, width, height = (scale * value for value in face["box"])
        line, bar_height = max(2, width // 50), max(4, width // 10)
        draw.rectangle([left, top, left + width - 1, top + height - 1], outline=COLOURS[face["emotion"]], width=line)
        label_bottom = max(top, 2 * font.size)  # inside the picture even for a face at its top edge
        label = f" {face['emotion']} {face['probabilities'][face['emotion']]:.0%} "
        label_box = draw.textbbox((left, label_bottom), label, font=font, anchor="ld")
        draw.rectangle(label_box, fill=COLOURS[face["emotion"]])
        draw.text((left, label_bottom), label, fill="white", font=font, anchor="ld")
        bar_top = min(top + height + line, picture.height - bar_height)
        for name, probability in face["probabilities"].items():
            draw.rectangle([left, bar_top, left + probability * width, bar_top + bar_height], fill=COLOURS[name])
            left += probability * width
    x, y = font.size // 2, picture.height + font.size
    for name in fer.EMOTIONS:
        draw.rectangle([x, y - font.size // 2, x + font.size, y + font.size // 2], fill=COLOURS[name])
        draw.text((x + 1.3 * font.size, y), name, fill="black", font=font, anchor="lm")
        x += 2.3 * font.size + draw.textlength(name, font=font)
    return canvas


def predict_image(model, detector, path, out_dir, device, tta):
    """The faces found in the image at `path`, each with its probabilities; writes the annotated copy."""
    image = open_image(path)
    boxes = find_faces(detector, image) if detector else [[0, 0, image.width, image.height]]
    if not boxes:
        raise fer.DataError(f"{path}: no face found (for an image that is already a face crop, pass --no-detect)")
    faces = classify(model, image, boxes, device, tta)
    out_path = (out_dir or path.parent) / f"{path.stem}.emotions.png"
    annotate(image, faces).save(out_path)
    print(f"wrote {out_path}", file=sys.stderr)
    return faces


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="photos to look at (.jpg, .png, ...)")
    parser.add_argument("--run", required=True, help="run folder written by train_baseline.py or train_transfer.py")
    parser.add_argument("--no-detect", dest="detect", action="store_false",
                        help="treat each whole image as one face crop (needs no OpenCV)")
    parser.add_argument("--tta", action="store_true", help="average each face's prediction with its mirror image's")
    parser.add_argument("--out", type=Path, help="folder for the annotated copies (default: next to each image)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    args = parser.parse_args(argv)

    device = fer.pick_device(args.device)
    try:
        detector = load_face_detector() if args.detect else None
        model, _ = fer.load_run(args.run, device)
    except ImportError:
        sys.exit(f"error: {HOW_TO_INSTALL_OPENCV}")
    except fer.DataError as error:
        sys.exit(f"error: {error}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    for path in map(Path, args.images):
        try:
            for face in predict_image(model, detector, path, args.out, device, args.tta):
                print(json.dumps({"image": str(path), **face}), flush=True)
        except (fer.DataError, OSError) as error:  # OSError: the annotated copy could not be written
            print(f"error: {error}", file=sys.stderr)
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
