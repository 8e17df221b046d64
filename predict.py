"""
Find the faces in photos and videos, or live from a webcam, and name the emotion each one shows.

    python predict.py photo.jpg holiday/                  # photos, and every image and video under a folder
    python predict.py --no-detect crops/                  # images that are already face crops, like FER-2013's
    python predict.py --out annotated/ --csv faces.csv photo.jpg clip.mp4
    python predict.py --every 3 --smooth 5 --plot clip.png clip.mp4
    python predict.py --webcam                            # a live window; q quits

The model is the released one (runs/release) unless --run names a run folder written by train_*.py; several
--run options average their runs' probabilities (an ensemble: more accurate, and slower: three runs took
about twice the time per face crop).
Finding faces, videos and the webcam need OpenCV (make install-predict); --no-detect on images does not.

Prints one JSON line per face: the image (for a video: the video, the frame index, its time in seconds and
a face number that follows the face from frame to frame), the box [left, top, width, height] in pixels,
the top emotion and all seven probabilities. Nothing is written next to the inputs: --out DIR receives
the annotated copies (per face a box, a label and a bar split into the seven probabilities), --csv FILE
one row per face, --plot FILE each video's probabilities over time. A picture or video without a face gets
one line saying "no face": that is an answer, not an error.
"""
EXIT_CODES = """exit status:
  0    every input was read (pictures and videos without a face included)
  1    some inputs could not be read or decoded, or the model could not be loaded: one "error:" line
       each; the other inputs were still analysed
  2    the command cannot work as given (a wrong option, an output file that is also an input, --plot
       without a video, a --device this machine lacks): one "error:" line, nothing is read
  141  the program reading the output stopped early (`predict.py ... | head -1`): predict.py stops
       quietly, as other Unix tools do
"""
import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import stat
import sys
import warnings
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

import fer

# FER-2013's crops are about 4% wider than OpenCV's Haar box around the same face (median over 240 training
# faces, enlarged and pasted into a canvas), so each side of a box grows by 2% before cropping: the crop the
# model was trained on. Scores cannot choose finer: on 726 such PrivateTest faces the baseline scores 56.7% with
# 2% and 57.7% with none, a tie (one standard error is 1.8 points), but 53.2% with 10% per side.
MARGIN = 0.02
# One colour per emotion (from matplotlib's tab10), for the boxes, the labels, the probability bars and the plot.
COLOURS = dict(zip(fer.EMOTIONS, ["#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f"]))
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
# Pictures looked for in folders: those of the dataset, and the other formats Pillow decodes that photos come in.
PICTURE_SUFFIXES = fer.IMAGE_SUFFIXES | {".webp", ".tif", ".tiff", ".gif"}
# Annotated copies are named <name>.emotions.png and <name>.emotions.mp4: never read back as faces.
OWN_OUTPUT = (".emotions.png", ".emotions.mp4")
# Faces per forward pass: the crops of many images are classified together. On 3,589 PrivateTest crops
# (--no-detect, one CPU thread, float32) 256 at a time took 1.4 ms of CPU per image, one at a time 3.3 ms.
BATCH_SIZE = 256
# Faces are searched for on a copy at most this many pixels on its longer side, the boxes scaled back, and
# must be at least MIN_FACE of the copy's shorter side (and the cascade's 24 pixels) wide. Both bound the
# search to the sizes a face worth classifying has: at full size a 4000x2160 photo of two faces took 5.6 s
# and gave 5 false faces (in hair, cloth, texture) besides the two, at 1024 pixels 0.3 s and the two.
PHOTO_DETECT_SIDE = 1024
MIN_FACE = 0.05
# Video frames are searched at 320 pixels: the Haar cascade takes 48 ms of CPU on a 640x480 frame, 17 ms on
# a 320x240 copy, and still finds faces down to 2 x 24 = 48 pixels wide. A whole 640x480 frame (decode,
# search, classify) then costs 20 ms of one CPU thread instead of 60.
VIDEO_DETECT_SIDE = 320
# Two boxes overlapping this much (intersection over union) are one face: the same face found twice, or
# a face and where it was in the previous analysed frame.
SAME_FACE = 0.3
# What --plot can write (matplotlib chooses the format by the name).
PLOT_SUFFIXES = {".png", ".pdf", ".svg"}
HOW_TO_INSTALL_OPENCV = ("finding faces, videos and the webcam need OpenCV: run `make install-predict` (or "
                         ".venv/bin/pip install -r requirements-predict.txt), or pass --no-detect for images that "
                         "are already face crops")


# -----------------------------------------------------------------------------
# Inputs: files, folders searched recursively, never predict.py's own output


def check_readable(path):
    """DataError unless `path` is a regular file this process may read, saying which it is not. Checked
    before a decoder sees the file: Pillow and FFmpeg call all of these "cannot decode", and a FIFO
    would block them."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise fer.DataError(f"{path}: no such file") from None
    except OSError as error:  # a folder on the way that may not be searched, a name too long, ...
        raise fer.DataError(f"{path}: {error.strerror.lower()}") from None
    if stat.S_ISDIR(mode):
        raise fer.DataError(f"{path}: a folder; expected an image or a video")
    if not stat.S_ISREG(mode):
        raise fer.DataError(f"{path}: not a regular file (a pipe, socket or device); expected an image or a video")
    try:
        open(path, "rb").close()
    except OSError as error:  # PermissionError above all
        raise fer.DataError(f"{path}: {error.strerror.lower()}") from None


def list_inputs(arguments, outputs, results):
    """[(path, name)] for each file named and each picture or video found under each folder named (sorted),
    `name` being its path below that folder. Each file once, however often it is named or found. Folders are
    searched without reading back predict.py's output: annotated copies (*.emotions.png, *.emotions.mp4),
    the --csv and --plot files and the --out folder. A folder that yields nothing, or cannot be searched,
    is reported to `results`."""

    def real(folder, name):  # one spelling per file: its folder resolved, not the file (a folder of 3,589
        return Path(folder).resolve() / name  # symbolic links took seconds of lstat and readlink to resolve)

    outputs = {real(path.parent, path.name) for path in outputs}
    seen, inputs = set(), []

    def cannot_search(error):
        results.error(f"{error.filename}: cannot search this folder ({error.strerror.lower()})")

    for argument in map(Path, arguments):
        if not argument.is_dir():
            if argument.name.endswith(OWN_OUTPUT):
                results.warning(f"{argument}: skipped: an annotated copy predict.py wrote")
            elif real(argument.parent, argument.name) not in seen:  # checked when it is read, in the order named
                seen.add(real(argument.parent, argument.name))
                inputs.append((argument, Path(argument.name)))
            continue
        found, errors = 0, results.errors
        for folder, subfolders, names in os.walk(argument, onerror=cannot_search):
            resolved = real(folder, "")
            subfolders[:] = sorted(name for name in subfolders if resolved / name not in outputs)
            for name in sorted(names):
                path = resolved / name
                if (Path(name).suffix.lower() in PICTURE_SUFFIXES | VIDEO_SUFFIXES and not name.endswith(OWN_OUTPUT)
                        and path not in outputs):
                    found += 1
                    if path not in seen:
                        seen.add(path)
                        inputs.append((Path(folder, name), Path(folder, name).relative_to(argument)))
        if not found and results.errors == errors:
            results.error(f"{argument}: no pictures or videos in this folder (looked for "
                          f"{', '.join(sorted(PICTURE_SUFFIXES | VIDEO_SUFFIXES))})")
    return inputs


def with_unique_names(inputs):
    """[(path, name)] -> [(path, name)] where no two names share a stem, ignoring case: each annotated copy,
    <stem>.emotions.png or .mp4 under --out, gets a file of its own (A/1.jpg and B/1.jpg named on the
    command line would both be 1; the second becomes 1-2)."""
    taken, unique = set(), []
    for path, name in inputs:
        candidate = name
        for number in itertools.count(2):
            if str(candidate.with_suffix("")).lower() not in taken:
                break
            candidate = name.with_name(f"{name.stem}-{number}{name.suffix}")
        taken.add(str(candidate.with_suffix("")).lower())
        unique.append((path, candidate))
    return unique


def is_video(path):
    return path.suffix.lower() in VIDEO_SUFFIXES


def open_image(path):
    """The picture at `path`, decoded and turned upright as the camera's EXIF orientation says; a DataError
    if Pillow cannot read it. 16-bit and float gray become 8-bit gray here, once, so that detection,
    cropping and drawing all see the same picture."""
    check_readable(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 million pixels and refuses above 179 million: a 388 KB PNG can hold
            # 20000x20000 pixels (a "decompression bomb"). For a photo of a face, both are errors.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # Image.open reads only the header: decode now, where errors are caught
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise fer.DataError(f"{path}: image of more than {Image.MAX_IMAGE_PIXELS:,} pixels, too many to decode "
                            f"safely (a decompression bomb?); expected a photo of a face") from None
    # Damage is an OSError (UnidentifiedImageError, "image file is truncated", ...), or in a few of Pillow's
    # decoders a ValueError (a BMP's palette size), SyntaxError or EOFError.
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise fer.DataError(f"{path}: cannot decode this file as an image ({error})") from None
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = to_8bit_gray(image)
    return image


def to_8bit_gray(image):
    """A 16-bit or float gray PIL image -> 8-bit gray (mode "L"), scaled: Pillow's convert("L") clips
    16-bit gray (a 16-bit PNG, TIFF or PGM: 0..65535) at 255, which turns all but the darkest 0.4% white."""
    pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
    # Integers ("I;16", and "I", as Pillow holds a 16-bit PGM) are 16-bit. Floats carry no range of
    # their own: 0..1 if every value fits, else 0..255 if every value fits, else 16-bit.
    full_scale = 65535.0
    if image.mode == "F" and pixels.max(initial=0) <= 255:
        full_scale = 1.0 if pixels.max(initial=0) <= 1 else 255.0
    return Image.fromarray(np.clip(np.rint(pixels * (255 / full_scale)), 0, 255).astype(np.uint8))


def output_path(out_dir, name, suffix):
    path = out_dir / name.parent / f"{name.stem}.emotions{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# -----------------------------------------------------------------------------
# Faces: found by OpenCV's Haar cascade, cropped and prepared like the training images, classified


def import_opencv():
    """cv2 with its own log lines off, and FFmpeg's (predict.py reports each problem itself, in one line)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read when the first video is opened
    try:
        import cv2  # optional: only finding faces, videos and the webcam need OpenCV
    except ImportError:
        raise fer.DataError(HOW_TO_INSTALL_OPENCV) from None
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


def load_face_detector():
    cv2 = import_opencv()
    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


def find_faces(detector, image, longest_side):
    """Boxes [left, top, width, height] of the frontal faces in `image`, widened by MARGIN, left to right.
    The search runs on a copy at most `longest_side` pixels on its longer side, for faces at least MIN_FACE
    of its shorter side wide."""
    import cv2

    scale = min(1, longest_side / max(image.size))
    gray = np.asarray(image.convert("L"))  # open_image has made 16-bit and float gray 8-bit already
    if scale < 1:
        gray = cv2.resize(gray, (round(image.width * scale), round(image.height * scale)), interpolation=cv2.INTER_AREA)
    smallest = max(24, round(MIN_FACE * min(gray.shape)))  # 24: the cascade's own window
    boxes = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
    widened = []
    for left, top, width, height in sorted(np.round(np.reshape(boxes, (-1, 4)) / scale).astype(int).tolist()):
        pad = round(MARGIN * width)
        right, bottom = min(image.width, left + width + pad), min(image.height, top + height + pad)
        left, top = max(0, left - pad), max(0, top - pad)
        widened.append([left, top, right - left, bottom - top])
    return widened


def crop_faces(image, boxes):
    """uint8 [N, 48, 48]: each box cut out of `image` and prepared exactly like the training images."""
    crops = [fer.prepare_face(image if box == [0, 0, image.width, image.height]  # the whole image: no copy
                              else image.crop((box[0], box[1], box[0] + box[2], box[1] + box[3])))
             for box in boxes]
    return torch.stack(crops) if crops else torch.empty(0, fer.IMAGE_SIZE, fer.IMAGE_SIZE, dtype=torch.uint8)


def describe(box, probabilities, number):
    """One face's answer: its number (in a picture, left to right; in a video, its track), box, emotion and
    probabilities. With no box: the answer for a picture or video without a face."""
    if box is None:
        return {"face": None, "box": None, "emotion": "no face", "probabilities": None}
    return {"face": number, "box": box, "emotion": fer.EMOTIONS[probabilities.argmax()],
            "probabilities": {name: round(p, 4) for name, p in zip(fer.EMOTIONS, probabilities.tolist())}}


def classify(model, crops, args):
    """Probabilities [N, 7] of uint8 face crops [N, 48, 48]."""
    if len(crops) == 0:
        return torch.empty(0, len(fer.EMOTIONS))
    return fer.predict_probabilities(model, crops, args.device, amp=args.amp, tta=args.tta, batch_size=BATCH_SIZE)


def predict_images(inputs, model, detector, args, results):
    """(path, name, faces) for each image that can be read, in order; `faces` is [] for a picture without
    one. An image that cannot be read is reported to `results` and skipped. The crops of many images go
    through the model together, while a second thread reads the next images (decoding and the model each
    let go of Python's lock while they compute)."""

    def read_batches():  # lists of (path, name, boxes, crops) with BATCH_SIZE faces, or the last few
        batch, faces = [], 0
        for path, name in inputs:
            try:
                image = open_image(path)
                boxes = (find_faces(detector, image, PHOTO_DETECT_SIDE) if detector
                         else [[0, 0, image.width, image.height]])
            except fer.DataError as error:
                results.error(error)
                continue
            batch.append((path, name, boxes, crop_faces(image, boxes)))
            faces += len(boxes)
            if faces >= BATCH_SIZE:
                yield batch
                batch, faces = [], 0
        if batch:
            yield batch

    batches = read_batches()
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = reader.submit(next, batches, None)
        while (batch := upcoming.result()) is not None:
            upcoming = reader.submit(next, batches, None)  # read the next batch while this one is classified
            probabilities = classify(model, torch.cat([crops for *_, crops in batch]), args)
            for path, name, boxes, _ in batch:
                yield path, name, [describe(box, face, number) for number, (box, face)
                                   in enumerate(zip(boxes, probabilities[:len(boxes)]))]
                probabilities = probabilities[len(boxes):]


# -----------------------------------------------------------------------------
# Output: JSON lines, CSV rows, error lines, annotated pictures


class Results:
    """Where the answers go: a JSON line per face on stdout, a row per face in --csv, a line per problem
    on stderr. `errors` counts the inputs that could not be read: exit status 1 if any."""

    def __init__(self):
        self.errors, self.csv_file, self.csv = 0, None, None

    def write_csv(self, path):
        """From now on, also a row per face into the CSV file `path` (if one is given)."""
        if path:
            self.csv_file = open(path, "w", newline="", encoding="utf-8", errors="surrogateescape")
            self.csv = csv.writer(self.csv_file)
            self.csv.writerow(["source", "frame", "time_s", "face", "left", "top", "width", "height", "emotion",
                               *fer.EMOTIONS])

    def face(self, face, **source):
        """`source`: image=path, or video=path, frame=index, time_s=seconds. Paths are written as they are
        (ensure_ascii=False), not as \\u escapes."""
        print(json.dumps({**source, **face}, ensure_ascii=False), flush=True)  # line by line, for a reader
        if self.csv:
            self.csv.writerow([source.get("image") or source["video"], source.get("frame", ""),
                               source.get("time_s", ""), face["face"], *(face["box"] or [""] * 4), face["emotion"],
                               *(face["probabilities"] or {}).values()])

    def error(self, error):
        print(f"error: {error}", file=sys.stderr, flush=True)
        self.errors += 1

    def warning(self, warning):
        print(f"warning: {warning}", file=sys.stderr, flush=True)

    def close(self):
        if self.csv_file:
            self.csv_file.close()


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


# -----------------------------------------------------------------------------
# Video and webcam: faces followed from frame to frame, probabilities smoothed over a few frames


def overlap(a, b):
    """Intersection over union of two boxes [left, top, width, height]."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    intersection = max(0, width) * max(0, height)
    return intersection / (a[2] * a[3] + b[2] * b[3] - intersection)


class FaceTracks:
    """Follows faces from one analysed frame to the next, so that each face's probabilities can be averaged
    over its last `window` frames: one face now and one before are the same face; otherwise a face
    continues the track whose last box overlaps its own most (intersection over union at least 0.3),
    and any other face starts a new track."""

    def __init__(self, window):
        self.window, self.tracks, self.new_id = window, [], itertools.count()

    def update(self, boxes, probabilities):
        """[(face number, probabilities averaged over the face's last `window` frames)] for this frame's faces."""
        previous, self.tracks, answers = self.tracks, [], []
        for box, face in zip(boxes, probabilities):
            track = max(previous, key=lambda track: overlap(track["box"], box), default=None)
            if track is None or (overlap(track["box"], box) < 0.3 and not len(boxes) == len(previous) == 1):
                track = {"id": next(self.new_id), "history": deque(maxlen=self.window)}
            else:
                previous.remove(track)
            track["box"] = box
            track["history"].append(face)
            self.tracks.append(track)
            answers.append((track["id"], torch.stack(list(track["history"])).mean(0)))
        return answers


def without_duplicates(boxes):
    """`boxes` less each box that overlaps an earlier one by SAME_FACE or more: one face found twice is one face."""
    kept = []
    for box in boxes:
        if all(overlap(box, other) < SAME_FACE for other in kept):
            kept.append(box)
    return kept


def find_faces_in_frame(detector, image, tracks):
    """The faces in a video frame, searched for on a copy VIDEO_DETECT_SIDE wide. A face of the previous frame
    missing there is looked for again at full size, in a region twice its size around its last box (in our
    test video of a moving face, 1 frame of 150 was missed at 320 pixels wide; this found it again). A face
    found both ways is kept once, as the first search found it: each copy would start a track of its own."""
    boxes = find_faces(detector, image, VIDEO_DETECT_SIDE)
    for left, top, width, height in (track["box"] for track in tracks.tracks):
        if any(overlap([left, top, width, height], box) >= SAME_FACE for box in boxes):
            continue
        region_left, region_top = max(0, left - width // 2), max(0, top - height // 2)
        region = image.crop((region_left, region_top, left + 3 * width // 2, top + 3 * height // 2))
        boxes += [[x + region_left, y + region_top, w, h]
                  for x, y, w, h in find_faces(detector, region, max(region.size))]
    return sorted(without_duplicates(boxes))


def analyse_frame(frame, model, detector, tracks, args):
    """(RGB image, faces) of one BGR video frame; each face with its number and smoothed probabilities."""
    import cv2

    image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    boxes = find_faces_in_frame(detector, image, tracks) if detector else [[0, 0, image.width, image.height]]
    if not boxes:  # the tracks stay: a face missed in this frame is looked for around its last box in the next
        return image, []
    probabilities = classify(model, crop_faces(image, boxes), args)
    return image, [describe(box, smoothed, number)
                   for box, (number, smoothed) in zip(boxes, tracks.update(boxes, probabilities))]


@contextlib.contextmanager
def one_thread():
    """Run the model on one thread: a video frame's few faces are too small a job to split, and the threads
    spend more time waiting for each other than they save (on a busy 2-core machine: 46 frames/s with one
    thread, 7.5 with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def predict_video(path, name, model, detector, args, results):
    """Every --every'th frame of the video at `path`: its faces to `results`, the annotated frames into
    --out. Returns the timeline [(time in seconds, {face number: probabilities})] for --plot."""
    cv2 = import_opencv()
    check_readable(path)
    video = cv2.VideoCapture(str(path))
    if not video.isOpened():
        raise fer.DataError(f"{path}: cannot decode this file as a video (expected a format FFmpeg reads: "
                            f"{', '.join(sorted(VIDEO_SUFFIXES))})")
    fps = video.get(cv2.CAP_PROP_FPS) or 30.0  # a container that does not say is most likely 30 frames/s
    frames_in_header = int(video.get(cv2.CAP_PROP_FRAME_COUNT))  # 0 where the container does not say
    tracks, timeline, writer = FaceTracks(args.smooth), [], None
    try:
        for index in itertools.count():
            if index % args.every:
                if not video.grab():  # a skipped frame is read, but neither converted nor analysed
                    break
                continue
            ok, frame = video.read()
            if not ok:
                break
            image, faces = analyse_frame(frame, model, detector, tracks, args)
            time_s = round(index / fps, 3)
            for face in faces:
                results.face(face, video=str(path), frame=index, time_s=time_s)
            timeline.append((time_s, {face["face"]: list(face["probabilities"].values()) for face in faces}))
            if args.out:
                picture = cv2.cvtColor(np.asarray(annotate(image, faces)), cv2.COLOR_RGB2BGR)
                if writer is None:  # the analysed frames only, at fps / every: the copy lasts as long as the video
                    out_path = output_path(args.out, name, ".mp4")
                    writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps / args.every,
                                             (picture.shape[1], picture.shape[0]))
                    if not writer.isOpened():
                        raise fer.DataError(f"{out_path}: cannot write a video there")
                writer.write(picture)
    finally:
        video.release()
        if writer is not None:
            writer.release()
    if not timeline:
        raise fer.DataError(f"{path}: no frame could be decoded")
    if index < frames_in_header:  # `index`: the frames read, analysed or skipped
        results.warning(f"{path}: its header says {frames_in_header} frames, and {index} could be read (the file "
                        f"is cut short or damaged); those {index} were analysed")
    if not any(faces for _, faces in timeline):
        results.face(describe(None, None, None), video=str(path), frame=None, time_s=None)
    return timeline


def plot_timelines(timelines, path):
    """One panel per video: the probabilities of its longest-followed face over time, a line per emotion.
    Frames where that face was not found leave a gap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(len(timelines), 1, figsize=(10, 3 * len(timelines)), squeeze=False)
    for axes, (video, timeline) in zip(panels[:, 0], timelines.items()):
        seen = Counter(number for _, faces in timeline for number in faces)
        main = seen.most_common(1)[0][0] if seen else None
        times = [time_s for time_s, _ in timeline]
        lines = np.array([faces.get(main, [np.nan] * len(fer.EMOTIONS)) for _, faces in timeline])
        for i, emotion in enumerate(fer.EMOTIONS):
            axes.plot(times, lines[:, i], color=COLOURS[emotion], linewidth=2, label=emotion)
        title = f"face {main}, found in {seen[main]} of {len(timeline)} frames" if seen else "no face found"
        axes.set(title=f"{Path(video).name}: {title}", xlabel="time (s)", ylabel="probability", ylim=(0, 1),
                 xlim=(0, max(times) or 1))
        axes.grid(alpha=0.3)
    panels[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run_webcam(index, model, detector, args):
    """A live window of camera `index`: boxes, labels and probability bars on every frame, until q."""
    cv2 = import_opencv()
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise fer.DataError("--webcam shows a window, and there is no display ($DISPLAY is not set)")
    try:
        cv2.namedWindow("predict.py")
    except cv2.error:
        raise fer.DataError("--webcam shows a window, and this OpenCV cannot open one (opencv-python-headless); "
                            "swap it for opencv-python: .venv/bin/pip uninstall -y opencv-python-headless && "
                            ".venv/bin/pip install opencv-python==4.14.0.94") from None
    camera = cv2.VideoCapture(index)
    try:
        if not camera.isOpened():
            raise fer.DataError(f"--webcam {index}: no camera there, or another program is using it")
        tracks = FaceTracks(args.smooth)
        while True:
            ok, frame = camera.read()
            if not ok:
                raise fer.DataError(f"--webcam {index}: the camera stopped sending frames")
            image, faces = analyse_frame(frame, model, detector, tracks, args)
            cv2.imshow("predict.py", cv2.cvtColor(np.asarray(annotate(image, faces)), cv2.COLOR_RGB2BGR))
            if cv2.waitKey(1) & 0xFF == ord("q") or cv2.getWindowProperty("predict.py", cv2.WND_PROP_VISIBLE) < 1:
                break  # q, or the window was closed
    finally:
        camera.release()
        cv2.destroyAllWindows()


# -----------------------------------------------------------------------------
# Command line


class Ensemble(torch.nn.Module):
    """Several runs as one model: it returns the log of their mean class probabilities, so the softmax that
    every caller applies gives back that mean, as evaluate.py averages an ensemble."""

    def __init__(self, models):
        super().__init__()
        self.members = torch.nn.ModuleList(models)

    def forward(self, images):
        return torch.stack([member(images).float().softmax(1) for member in self.members]).mean(0).log()


def load_model(runs, device):
    """The model of the run folder named, the ensemble of several, or the released model if none is named."""
    # channels_last: 1.5x faster on the CPU (the baseline, float32: 2.2 -> 1.4 ms of CPU per face, batch 256)
    models = [fer.load_run(run, device)[0].to(memory_format=torch.channels_last)
              for run in runs or [fer.RELEASED_RUN]]
    return models[0] if len(models) == 1 else Ensemble(models)


def refuse(message):
    """A command that cannot work as given: one line, exit status 2, and nothing read or written."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_outputs(args):
    """Refuse output paths that would destroy an input, before anything is read: --csv and --plot are
    opened for writing, and a CSV named like a picture or video (--csv photo.jpg) is one about to be lost."""
    named_files = {Path(path).resolve() for path in args.inputs if not Path(path).is_dir()}
    for option, path in (("--csv", args.csv), ("--plot", args.plot), ("--out", args.out)):
        if path and path.resolve() in named_files:
            refuse(f"{option} {path}: this is also an input; writing it would destroy it")
    if args.csv and (args.csv.suffix.lower() in PICTURE_SUFFIXES | VIDEO_SUFFIXES or args.csv.is_dir()):
        refuse(f"--csv {args.csv}: expected a new or CSV file to write, not a picture, video or folder")
    if args.plot and args.plot.suffix.lower() not in PLOT_SUFFIXES:
        refuse(f"--plot {args.plot}: expected a file name ending in {', '.join(sorted(PLOT_SUFFIXES))}")
    if args.out and args.out.exists() and not args.out.is_dir():
        refuse(f"--out {args.out}: a file; expected a folder for the annotated copies")


def predict_all(images, videos, model, detector, args, results):
    """The faces of every image, then of every video, to `results`; the annotated copies into --out and
    the videos' plot into --plot."""
    for path, name, faces in predict_images(images, model, detector, args, results):
        for face in faces or [describe(None, None, None)]:
            results.face(face, image=str(path))
        try:
            if args.out:
                annotate(open_image(path), faces).save(output_path(args.out, name, ".png"))
        except (fer.DataError, OSError) as error:  # the file changed since, or the copy cannot be written
            results.error(error)
    timelines = {}
    for path, name in videos:
        try:
            with one_thread():
                timelines[str(path)] = predict_video(path, name, model, detector, args, results)
        except fer.DataError as error:
            results.error(error)
    try:
        if args.plot and timelines:
            plot_timelines(timelines, args.plot)
    except OSError as error:
        results.error(error)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="PATH", help="images (.jpg, .png, .webp, ...), videos (.mp4, "
                        ".avi, .mov, .mkv, .webm, ...) and folders, searched recursively for both")
    parser.add_argument("--run", action="append", help=f"run folder written by train_*.py; repeated, the runs' "
                        f"ensemble (default: {fer.RELEASED_RUN.name}, the released model)")
    parser.add_argument("--no-detect", dest="detect", action="store_false",
                        help="treat each whole image (or frame) as one face crop (images need no OpenCV then)")
    parser.add_argument("--tta", action="store_true", help="average each face's prediction with its mirror image's")
    parser.add_argument("--out", type=Path, help="folder for annotated copies, <name>.emotions.png per image and "
                        "<name>.emotions.mp4 per video (default: none are written)")
    parser.add_argument("--csv", type=Path, help="also write one row per face to this CSV file")
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="analyse every N-th video frame (default: %(default)s)")
    parser.add_argument("--smooth", type=int, default=1, metavar="K", help="average each face's probabilities over "
                        "its last K analysed video frames (default: %(default)s, no smoothing)")
    parser.add_argument("--plot", type=Path, metavar="FILE",
                        help="plot each video's probabilities over time into FILE (.png, .pdf or .svg)")
    parser.add_argument("--webcam", type=int, nargs="?", const=0, metavar="INDEX", help="live window of camera INDEX "
                        "(default camera: 0); q quits")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bfloat16 autocast, as in "
                        "training: auto = on where bf16 is native (GPUs from Ampere on, CPUs with AVX-512 BF16 "
                        "or AMX); off = float32, like evaluate.py (default: %(default)s)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    args = parser.parse_args(argv)
    if not args.inputs and args.webcam is None:
        parser.error("name images, videos or folders, or pass --webcam")
    if args.every < 1 or args.smooth < 1:
        parser.error("--every and --smooth count frames: 1 or more")
    check_outputs(args)
    if hasattr(sys.stdout, "reconfigure"):  # a file name that is not UTF-8 is printed as its own bytes
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        args.device = fer.pick_device(args.device)
    except fer.DataError as error:
        refuse(error)
    # bfloat16 halves the model's time on a CPU with bf16 instructions (baseline: 1,092 -> 516 CPU-us per
    # face; VGGNet: 3,982 -> 1,999) and changes little: on PrivateTest a trained VGGNet's top emotion was
    # the same as in float32 for 99.8% of the faces, no probability moving by more than 0.011.
    args.amp = {"on": True, "off": False, "auto": fer.native_bf16(args.device)}[args.amp]

    results = Results()
    inputs = with_unique_names(list_inputs(args.inputs, [path for path in (args.csv, args.plot, args.out) if path],
                                           results))
    images = [(path, name) for path, name in inputs if not is_video(path)]
    videos = [(path, name) for path, name in inputs if is_video(path)]
    if args.plot and not videos and args.webcam is None:
        refuse(f"--plot {args.plot}: plots videos, and none of the inputs is one")
    try:
        model = load_model(args.run, args.device)
        detector = load_face_detector() if args.detect else None
        if args.webcam is not None:
            with one_thread():
                run_webcam(args.webcam, model, detector, args)
            sys.exit(0)
    except fer.DataError as error:
        sys.exit(f"error: {error}")
    try:
        results.write_csv(args.csv)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        refuse(error)
    try:
        predict_all(images, videos, model, detector, args, results)
    except BrokenPipeError:  # `predict.py ... | head -1`: the reader has gone; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python would report it again at exit
        sys.exit(141)
    finally:
        results.close()
    sys.exit(1 if results.errors else 0)


if __name__ == "__main__":
    main()
