"""
Find the faces in photos and videos, or live from a webcam, and name the emotion each one shows.

    python predict.py photo.jpg holiday/                  # photos, and every image and video under a folder
    python predict.py --no-detect crops/                  # images that are already face crops, like FER-2013's
    python predict.py --out annotated/ --csv faces.csv photo.jpg clip.mp4
    python predict.py --every 3 --smooth 5 --plot clip.png clip.mp4
    python predict.py --webcam                            # a live window; q quits

The model is the released one (runs/release) unless --run names a run folder written by train_*.py.
Finding faces, videos and the webcam need OpenCV (make install-predict); --no-detect on images does not.

Prints one JSON line per face: the image (for a video: the video, the frame index, its time in seconds and
a face number that follows the face from frame to frame), the box [left, top, width, height] in pixels,
the top emotion and all seven probabilities. Nothing is written next to the inputs: --out DIR receives
the annotated copies (per face a box, a label and a bar split into the seven probabilities), --csv FILE
one row per face, --plot FILE each video's probabilities over time.
"""
import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import sys
from collections import Counter, deque
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

import fer

# FER-2013's crops are about 4% wider than OpenCV's Haar box around the same face (median over 240 training
# faces, enlarged and pasted into a canvas), so each side of a box grows by 2% before cropping. More hurts:
# on 726 such PrivateTest faces the baseline scores 56.7% with 2%, 57.7% with none, 53.2% with 10% per side.
MARGIN = 0.02
# One colour per emotion (from matplotlib's tab10), for the boxes, the labels, the probability bars and the plot.
COLOURS = dict(zip(fer.EMOTIONS, ["#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f"]))
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
# Annotated copies are named <name>.emotions.png and <name>.emotions.mp4: never read back as faces.
OWN_OUTPUT = (".emotions.png", ".emotions.mp4")
# Faces per forward pass: the crops of many images are classified together. On 3,589 PrivateTest crops
# (--no-detect, one CPU thread, float32) 256 at a time took 1.4 ms of CPU per image, one at a time 3.3 ms.
BATCH_SIZE = 256
# Video frames are searched for faces at this width, the boxes scaled back: the Haar cascade takes 48 ms of
# CPU on a 640x480 frame, 17 ms on a 320x240 copy, and still finds faces down to 2 x 24 = 48 pixels wide.
# A whole 640x480 frame (decode, search, classify) then costs 20 ms of one CPU thread instead of 60.
DETECT_WIDTH = 320
HOW_TO_INSTALL_OPENCV = ("finding faces, videos and the webcam need OpenCV: run `make install-predict` (or "
                         ".venv/bin/pip install -r requirements-predict.txt), or pass --no-detect for images that "
                         "are already face crops")


# -----------------------------------------------------------------------------
# Inputs: files, folders searched recursively, never predict.py's own output


def list_inputs(arguments, out_dir):
    """[(path, name)] for each file named and each image or video found under each folder named (sorted),
    `name` being its path below that folder: the annotated copy keeps it under --out, so two photos
    called 1.jpg in different folders do not overwrite each other's copy. Skipped: predict.py's own
    output, that is files named *.emotions.png or *.emotions.mp4 and anything inside --out."""
    out_dir = out_dir.resolve() if out_dir else None

    def inside_out_dir(path):
        return out_dir is not None and out_dir in (path.resolve(), *path.resolve().parents)

    inputs = []
    for argument in map(Path, arguments):
        if argument.name.endswith(OWN_OUTPUT) or inside_out_dir(argument):
            continue
        if not argument.is_dir():
            inputs.append((argument, Path(argument.name)))
            continue
        for folder, subfolders, names in os.walk(argument):
            subfolders[:] = sorted(name for name in subfolders if not inside_out_dir(Path(folder, name)))
            folder, below = Path(folder), Path(folder).relative_to(argument)
            inputs += [(folder / name, below / name) for name in sorted(names)
                       if os.path.splitext(name)[1].lower() in fer.IMAGE_SUFFIXES | VIDEO_SUFFIXES
                       and not name.endswith(OWN_OUTPUT)]
    return inputs


def is_video(path):
    return path.suffix.lower() in VIDEO_SUFFIXES


def open_image(path):
    """The picture at `path`, turned upright as the camera's EXIF orientation says. 16-bit and float gray
    become 8-bit gray here, once, so that detection, cropping and drawing all see the same picture."""
    if not path.is_file():
        raise fer.DataError(f"{path}: no such file")
    image = fer.open_image(path)  # DataError for anything Pillow cannot decode, decompression bombs included
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = fer.to_8bit_gray(image)
    return image


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


def find_faces(detector, image, detect_width=None):
    """Boxes [left, top, width, height] of the frontal faces in `image`, widened by MARGIN, left to right.
    With `detect_width`, the search runs on a copy scaled down to that width."""
    import cv2

    scale = detect_width / image.width if detect_width and image.width > detect_width else 1
    gray = np.asarray(fer.to_8bit_gray(image))
    if scale < 1:
        gray = cv2.resize(gray, (detect_width, round(image.height * scale)), interpolation=cv2.INTER_AREA)
    boxes = np.asarray(detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)).reshape(-1, 4)
    widened = []
    for left, top, width, height in sorted(np.round(boxes / scale).astype(int).tolist()):  # () when none found
        pad = round(MARGIN * width)
        right, bottom = min(image.width, left + width + pad), min(image.height, top + height + pad)
        left, top = max(0, left - pad), max(0, top - pad)
        widened.append([left, top, right - left, bottom - top])
    return widened


def crop_faces(image, boxes):
    """uint8 [N, 48, 48]: each box cut out of `image` and prepared exactly like the training images."""
    return torch.stack([fer.prepare_face(image.crop((left, top, left + width, top + height)))
                        for left, top, width, height in boxes])


def describe(box, probabilities):
    return {"box": box, "emotion": fer.EMOTIONS[probabilities.argmax()],
            "probabilities": {name: round(p, 4) for name, p in zip(fer.EMOTIONS, probabilities.tolist())}}


def classify(model, crops, args):
    """Probabilities [N, 7] of uint8 face crops [N, 48, 48]."""
    return fer.predict_probabilities(model, crops, args.device, amp=args.amp, tta=args.tta, batch_size=BATCH_SIZE)


def predict_images(inputs, model, detector, args, results):
    """(path, name, faces) for each image that can be read, in order. The crops of many images go through
    the model together; an image that cannot be read is reported to `results` and skipped."""
    waiting, waiting_faces = [], 0  # (path, name, boxes, crops) of images read but not yet classified

    def classify_waiting():
        probabilities = classify(model, torch.cat([crops for *_, crops in waiting]), args)
        for path, name, boxes, _ in waiting:
            yield path, name, [describe(box, face) for box, face in zip(boxes, probabilities[:len(boxes)])]
            probabilities = probabilities[len(boxes):]

    for path, name in inputs:
        try:
            image = open_image(path)
            boxes = find_faces(detector, image) if detector else [[0, 0, image.width, image.height]]
            if not boxes:
                raise fer.DataError(f"{path}: no face found (for an image that is already a face crop, "
                                    f"pass --no-detect)")
        except fer.DataError as error:
            results.error(error)
            continue
        waiting.append((path, name, boxes, crop_faces(image, boxes)))
        waiting_faces += len(boxes)
        if waiting_faces >= BATCH_SIZE:
            yield from classify_waiting()
            waiting, waiting_faces = [], 0
    if waiting:
        yield from classify_waiting()


# -----------------------------------------------------------------------------
# Output: JSON lines, CSV rows, error lines, annotated pictures


class Results:
    """Where the answers go: a JSON line per face on stdout, a row per face in --csv, a line per problem
    on stderr (and then exit status 1)."""

    def __init__(self, csv_path=None):
        self.failed = False
        self.csv_file = open(csv_path, "w", newline="") if csv_path else None
        self.csv = csv.writer(self.csv_file) if csv_path else None
        if self.csv:
            self.csv.writerow(["source", "frame", "time_s", "left", "top", "width", "height", "emotion", *fer.EMOTIONS])

    def face(self, face, **source):
        """`source`: image=path, or video=path, frame=index, time_s=seconds."""
        print(json.dumps({**source, **face}), flush=True)  # line by line, for a program reading along
        if self.csv:
            self.csv.writerow([source.get("image") or source["video"], source.get("frame", ""),
                               source.get("time_s", ""), *face["box"], face["emotion"],
                               *face["probabilities"].values()])

    def error(self, error):
        print(f"error: {error}", file=sys.stderr, flush=True)
        self.failed = True

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


def find_faces_in_frame(detector, image, tracks):
    """The faces in a video frame, searched for on a copy DETECT_WIDTH wide. A face of the previous frame
    missing there is looked for again at full size, in a region twice its size around its last box (in our
    test video of a moving face, 1 frame of 150 was missed at 320 pixels wide; this found it again)."""
    boxes = find_faces(detector, image, DETECT_WIDTH)
    for left, top, width, height in (track["box"] for track in tracks.tracks):
        if any(overlap([left, top, width, height], box) >= 0.3 for box in boxes):
            continue
        region_left, region_top = max(0, left - width // 2), max(0, top - height // 2)
        region = image.crop((region_left, region_top, left + 3 * width // 2, top + 3 * height // 2))
        boxes += [[x + region_left, y + region_top, w, h] for x, y, w, h in find_faces(detector, region)]
    return sorted(boxes)


def analyse_frame(frame, model, detector, tracks, args):
    """(RGB image, faces) of one BGR video frame; each face with its number and smoothed probabilities."""
    import cv2

    image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    boxes = find_faces_in_frame(detector, image, tracks) if detector else [[0, 0, image.width, image.height]]
    if not boxes:
        return image, []
    probabilities = classify(model, crop_faces(image, boxes), args)
    return image, [{"face": number, **describe(box, smoothed)}
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
    if not path.is_file():
        raise fer.DataError(f"{path}: no such file")
    video = cv2.VideoCapture(str(path))
    if not video.isOpened():
        raise fer.DataError(f"{path}: cannot decode this file as a video (expected a format FFmpeg reads: "
                            f"{', '.join(sorted(VIDEO_SUFFIXES))})")
    fps = video.get(cv2.CAP_PROP_FPS) or 30.0  # a container that does not say is most likely 30 frames/s
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
    if not any(faces for _, faces in timeline):
        results.error(f"{path}: no face found in any of its {len(timeline)} analysed frames")
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


def load_model(run, device):
    model, _ = fer.load_run(run or fer.RELEASED_RUN, device)
    # channels_last: 1.5x faster on the CPU (the baseline, float32: 2.2 -> 1.4 ms of CPU per face, batch 256)
    return model.to(memory_format=torch.channels_last)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="PATH", help="images (.jpg, .png, ...), videos (.mp4, .avi, "
                        ".mov, .mkv, .webm, ...) and folders, searched recursively for both")
    parser.add_argument("--run", help=f"run folder written by train_*.py (default: {fer.RELEASED_RUN.name}, "
                        "the released model)")
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
                        help="plot each video's probabilities over time into FILE (.png)")
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

    args.device = fer.pick_device(args.device)
    # bfloat16 halves the model's time on a CPU with bf16 instructions (baseline: 1,092 -> 516 CPU-us per
    # face; VGGNet: 3,982 -> 1,999) and changes little: on PrivateTest a trained VGGNet's top emotion was
    # the same as in float32 for 99.8% of the faces, no probability moving by more than 0.011.
    args.amp = {"on": True, "off": False, "auto": fer.native_bf16(args.device)}[args.amp]
    try:
        model = load_model(args.run, args.device)
        detector = load_face_detector() if args.detect else None
        if args.webcam is not None:
            with one_thread():
                run_webcam(args.webcam, model, detector, args)
            sys.exit(0)
        results = Results(args.csv)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
    except (fer.DataError, OSError) as error:  # OSError: the CSV file or the --out folder cannot be created
        sys.exit(f"error: {error}")
    inputs = list_inputs(args.inputs, args.out)
    images = [(path, name) for path, name in inputs if not is_video(path)]
    videos = [(path, name) for path, name in inputs if is_video(path)]
    for path, name, faces in predict_images(images, model, detector, args, results):
        for face in faces:
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
    results.close()
    sys.exit(1 if results.failed else 0)


if __name__ == "__main__":
    main()
