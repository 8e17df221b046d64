"""
fer.py: facial emotion recognition on FER-2013 in plain PyTorch.

Everything the scripts share lives here, in the order a reader needs it: data -> augmentation ->
models -> training loop -> evaluation -> run folders. The scripts (train_baseline.py, evaluate.py, ...)
parse arguments, call in, and write what only they need; the training command line is train_baseline.py's,
which train_transfer.py shares.
"""
import atexit
import copy
import csv
import hashlib
import json
import math
import os
import pickle
import pickletools
import sys
import time
import warnings
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

# FER-2013's label order: the integer label of each emotion is its index here.
EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
IMAGE_SIZE = 48
PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_DATA = os.environ.get("FER_DATA", "data/fer2013")
CACHE_DIR = Path(os.environ.get("FER_CACHE", PROJECT_DIR / "data" / "cache"))
# The model this repository ships (a run folder, committed): predict.py, gradcam.py and export.py use it
# when no --run is named, so a fresh clone classifies faces without training first.
RELEASED_RUN = PROJECT_DIR / "runs" / "release"


class DataError(Exception):
    """Bad input (data, files, settings); the message names the path or setting and what was expected."""


# -----------------------------------------------------------------------------
# Data: FER-2013 as three uint8 tensors (train / val / test), decoded once and cached

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
# The Kaggle file-name prefixes carry the original fer2013.csv "Usage" column.
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
HOW_TO_GET_DATA = (
    "Get FER-2013 from https://www.kaggle.com/datasets/msambare/fer2013 (folders train/ and test/) "
    "or the original fer2013.csv, put it at data/fer2013 (or point --data / FER_DATA at it), "
    "or run `make data`, which downloads it or unpacks the archive you downloaded."
)


def prepare_face(image):
    """A PIL image of a face -> uint8 tensor [48, 48]: gray, centre square crop, resize. The one
    preprocessing path for training data and for new photos alike."""
    from PIL import Image

    image = image.convert("L")
    width, height = image.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != IMAGE_SIZE:
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())


def read_image(path):
    """An image file of the dataset (or any 8-bit face crop) -> uint8 tensor [48, 48], prepared by prepare_face.
    Photos from elsewhere go through predict.py's open_image, which also handles 16-bit gray and huge files."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return prepare_face(image)
    # Damage is an OSError (UnidentifiedImageError, "image file is truncated", ...), or in a few of Pillow's
    # decoders a ValueError, SyntaxError or EOFError; a damaged header may claim billions of pixels.
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot decode this file as an image ({error})") from None


def list_image_folders(root):
    """Kaggle layout ROOT/{train,test}/<emotion>/*.jpg -> {"train": [(path, label)], "test": [...]}."""
    if not root.is_dir():
        raise DataError(f"{root}: dataset not found. {HOW_TO_GET_DATA}")
    files = {}
    for folder in ("train", "test"):
        split_dir = root / folder
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: missing folder; expected {root}/train/<emotion>/ and {root}/test/<emotion>/")
        files[folder] = []
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if class_dir.name.lower() not in EMOTIONS:  # some copies of FER-2013 name them Angry/, Happy/, ...
                raise DataError(f"{class_dir}: unknown class folder '{class_dir.name}'; expected one of {', '.join(EMOTIONS)}")
            label = EMOTIONS.index(class_dir.name.lower())
            files[folder] += [(p, label) for p in sorted(class_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files[folder]:
            raise DataError(f"{split_dir}: no images (.jpg/.png) found under {split_dir}/<emotion>/")
    return files


def usage_of(path):
    prefix = path.name.split("_")[0]
    return prefix if prefix in USAGE_TO_SPLIT else None


def stratified_split(labels, fraction, seed):
    """Indices (keep, held_out): `fraction` of every class held out, chosen by a seeded shuffle."""
    generator = torch.Generator().manual_seed(seed)
    held_out = []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held_out.append(members[: round(len(members) * fraction)])
    held_out = torch.cat(held_out).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_out] = False
    return keep.nonzero().flatten(), held_out


def as_split(images, labels, keys=(), votes=None):
    """One split as tensors; with `votes` (read_ferplus_votes) also each image's FER+ votes, looked up by `keys`
    (NaN where an image has none)."""
    split = {"images": torch.stack(images) if isinstance(images, list) else images,
             "labels": torch.tensor(labels, dtype=torch.long) if isinstance(labels, list) else labels}
    if votes:
        missing = [math.nan] * len(FERPLUS_COLUMNS)
        split["votes"] = torch.tensor([votes.get(key, missing) for key in keys], dtype=torch.float32)
    return split


def read_image_folders(root, val_fraction, seed):
    files = list_image_folders(root)
    all_files = files["train"] + files["test"]
    if all(usage_of(path) for path, _ in all_files):
        # The original three-way split, recovered from the file names.
        grouped = {split: ([], [], []) for split in USAGE_TO_SPLIT.values()}
        for path, label in all_files:
            images, labels, keys = grouped[USAGE_TO_SPLIT[usage_of(path)]]
            images.append(read_image(path))
            labels.append(label)
            keys.append(path.relative_to(root).as_posix())  # how FER+ votes name the image
        for usage, split in USAGE_TO_SPLIT.items():
            if not grouped[split][0]:
                raise DataError(f"{root}: no {usage}_* images; expected Training_ files in train/ "
                                f"and PublicTest_ and PrivateTest_ files in test/")
        votes = read_ferplus_votes(root / FERPLUS_VOTES, key_column="kaggle_path")
        return {split: as_split(images, labels, keys, votes) for split, (images, labels, keys) in grouped.items()}
    print(f"{root}: file names carry no Training_/PublicTest_/PrivateTest_ prefixes, so a stratified "
          f"{val_fraction:.0%} validation split (seed {seed}) is carved from train/ and test/ is the test split")
    train = as_split([read_image(p) for p, _ in files["train"]], [label for _, label in files["train"]])
    test = as_split([read_image(p) for p, _ in files["test"]], [label for _, label in files["test"]])
    keep, held_out = stratified_split(train["labels"], val_fraction, seed)
    return {"train": as_split(train["images"][keep], train["labels"][keep]),
            "val": as_split(train["images"][held_out], train["labels"][held_out]),
            "test": test}


def read_fer2013_csv(path):
    """The original fer2013.csv: columns emotion, pixels (2304 numbers), Usage."""
    grouped = {split: ([], [], []) for split in USAGE_TO_SPLIT.values()}
    with open(path, newline="", encoding="utf-8-sig") as file:  # -sig: also with the mark Excel puts first
        reader = csv.DictReader(file)
        try:
            missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: expected the columns emotion,pixels,Usage; missing {', '.join(sorted(missing))} "
                                f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})")
            for row_number, row in enumerate(reader):
                try:
                    pixels = np.array(row["pixels"].split(), dtype=np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)
                    label, split = int(row["emotion"]), USAGE_TO_SPLIT[row["Usage"]]
                    if not 0 <= label < len(EMOTIONS):
                        raise ValueError(f"emotion {label} is not in 0..6")
                # A missing field is None (AttributeError, TypeError); a pixel value of 256 or -1 is an OverflowError.
                except (ValueError, KeyError, AttributeError, TypeError, OverflowError) as error:
                    raise DataError(f"{path}, line {reader.line_num}: expected emotion 0-6, 2304 pixel values 0-255 "
                                    f"and Usage Training/PublicTest/PrivateTest ({error!r})") from None
                grouped[split][0].append(torch.from_numpy(pixels))
                grouped[split][1].append(label)
                grouped[split][2].append(row_number)  # FERPlus's fer2013new.csv follows these rows one to one
        # Binary data is no UTF-8 text (UnicodeDecodeError); NUL bytes and endless fields are no CSV (csv.Error).
        except (UnicodeDecodeError, csv.Error) as error:
            raise DataError(f"{path}: not a CSV text file; cannot read it near line {reader.line_num + 1} ({error})") from None
    for split, (images, _, _) in grouped.items():
        if not images:
            raise DataError(f"{path}: no rows for the {split} split")
    votes = read_ferplus_votes(path.with_name(FERPLUS_CSV), key_column=None)
    return {split: as_split(images, labels, rows, votes) for split, (images, labels, rows) in grouped.items()}


# FER+ (Barsoum et al., 2016, MIT licence): ten crowd votes for every FER-2013 image, over these columns.
FERPLUS_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]
FERPLUS_VOTES = "ferplus_alignment.csv"  # in a Kaggle-layout folder: kaggle_path and the ten votes (make data)
FERPLUS_CSV = "fer2013new.csv"  # beside fer2013.csv: FERPlus's own file, one row per fer2013.csv row
# The columns of the seven FER-2013 emotions, in EMOTIONS order.
FERPLUS_EMOTIONS = [FERPLUS_COLUMNS.index(name) for name in
                    ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")]


def read_ferplus_votes(path, key_column):
    """{key: ten vote counts} from a FER+ votes file, keyed by `key_column` (None: by row number); {} if the
    file is absent, since FER+ votes are optional. Rows with empty votes, or no FER+ image name, have no votes."""
    if not path.is_file():
        return {}
    votes = {}
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        missing = set(FERPLUS_COLUMNS + [key_column or FERPLUS_COLUMNS[0]]) - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: not a FER+ votes file; missing the columns {', '.join(sorted(missing))}")
        for row_number, row in enumerate(reader):
            if not row["neutral"].strip() or row.get("Image name", "named").strip() == "":
                continue
            try:
                votes[row_number if key_column is None else row[key_column]] = [float(row[c]) for c in FERPLUS_COLUMNS]
            except (ValueError, TypeError) as error:
                raise DataError(f"{path}, line {reader.line_num}: expected ten vote counts ({error})") from None
    return votes


def ferplus_labels(votes):
    """FER+ votes [N, 10] -> (vote distribution over EMOTIONS [N, 7], majority emotion [N], has_label [N]).

    Only the seven FER-2013 emotions count: contempt, unknown and not-a-face have no class here. A single vote
    of ten is dropped as noise, as FER+'s authors do. An image with no vote left (no FER+ entry, only single
    votes, or only votes outside the seven) has no FER+ label: it is left out of FER+ training and scoring.
    A tie goes to the emotion first in EMOTIONS."""
    counts = votes[:, FERPLUS_EMOTIONS].nan_to_num(0)
    counts = counts * (counts >= 2)
    total = counts.sum(1)
    has_label = total > 0
    return counts / total.clamp(min=1).unsqueeze(1), counts.argmax(1), has_label


def ferplus_clear_majority(votes):
    """FER+ votes [N, 10] -> True where one of the seven emotions holds more than half of the votes, single
    votes dropped and contempt, unknown and not-a-face counted in the total. These are the images FERPlus's
    own code scores its test accuracy on (its "majority" mode), so accuracy on them compares with published
    FER+ numbers. Scoring against ferplus_labels' majority also counts the faces the crowd splits on."""
    counts = votes.nan_to_num(0)
    counts = counts * (counts >= 2)
    return counts[:, FERPLUS_EMOTIONS].amax(1) > counts.sum(1) / 2


def with_ferplus_labels(data):
    """`data` relabelled by the FER+ crowd, for --labels ferplus: every split keeps its images that have a FER+
    label; "labels" becomes the majority emotion (what validation selects on) and "targets" the vote
    distribution (what the loss fits: a face half the crowd calls sad and half neutral teaches both)."""
    if any("votes" not in split for split in data.values()):
        raise DataError(f"--labels ferplus: no FER+ votes beside the dataset (expected {FERPLUS_VOTES} in the "
                        f"Kaggle-layout folder, or {FERPLUS_CSV} beside fer2013.csv); `make data` gets them")
    relabelled = {}
    for name, split in data.items():
        distribution, majority, has_label = ferplus_labels(split["votes"])
        relabelled[name] = {"images": split["images"][has_label], "labels": majority[has_label],
                            "targets": distribution[has_label], "votes": split["votes"][has_label]}
    return relabelled


def load_training_data(config):
    """The data a training script trains on: FER-2013, perhaps a fraction of its training images,
    labelled by FER-2013's labels or by the FER+ crowd (config["labels"])."""
    data = training_subset(load_fer2013(config["data"], seed=config["seed"]), config["train_fraction"], config["seed"])
    return with_ferplus_labels(data) if config["labels"] == "ferplus" else data


def training_subset(data, fraction, seed):
    """`data` with a stratified, seeded `fraction` of its training images (all of them at 1.0): how
    each method fares when labelled data is scarce. Validation and test splits stay whole."""
    if fraction >= 1:
        return data
    _, kept = stratified_split(data["train"]["labels"], fraction, seed)
    return dict(data, train={key: value[kept] for key, value in data["train"].items()})


def source_fingerprint(source):
    """The decoded-data cache's key: changes whenever a file the loader reads (the images and the votes file
    of a folder; a CSV and the fer2013new.csv beside it) is added, removed, resized or touched."""
    source = source.resolve()  # the same key for a relative and an absolute path to one folder
    digest = hashlib.sha1(str(source).encode())
    if source.is_file():
        paths = [str(source)] + [str(p) for p in [source.with_name(FERPLUS_CSV)] if p.is_file()]
    else:  # os.walk + os.stat: 4x faster than Path.rglob
        paths = sorted(os.path.join(folder, name) for folder, _, names in os.walk(source) for name in names
                       if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES or name == FERPLUS_VOTES)
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def load_fer2013(root=DEFAULT_DATA, val_fraction=0.1, seed=0, cache_dir=None):
    """FER-2013 as {"train"|"val"|"test": {"images": uint8 [N, 48, 48], "labels": int64 [N]}}, and "votes"
    (float [N, 10], FER+ crowd votes; NaN where an image has none) when the votes are beside the data.
    `root` is a Kaggle-layout folder, a fer2013.csv, or a folder holding fer2013.csv. Decoding 35,887 JPEGs
    takes a while, so the tensors are cached, keyed by a fingerprint of the files: then a load is one torch.load."""
    root = Path(root)
    if root.is_dir() and not (root / "train").exists() and (root / "fer2013.csv").is_file():
        root = root / "fer2013.csv"
    if not root.exists():
        raise DataError(f"{root}: dataset not found. {HOW_TO_GET_DATA}")
    fingerprint = source_fingerprint(root)
    cache_file = Path(cache_dir or CACHE_DIR) / f"fer2013-{fingerprint[:16]}-val{val_fraction}-seed{seed}.pt"
    if cache_file.exists():
        return torch.load(cache_file, weights_only=True)
    print(f"decoding {root} (once; cached in {cache_file})")
    splits = read_fer2013_csv(root) if root.is_file() else read_image_folders(root, val_fraction, seed)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(splits, cache_file)
    return splits


# -----------------------------------------------------------------------------
# Augmentation: whole batches of tensors, on the batch's device


def per_image_uniform(images, low, high, generator=None):
    """One random number in [low, high) per image of a batch [B, C, H, W], shaped [B, 1, 1] for its pixel grid.
    Drawn on the CPU (from `generator` or torch's global one), so a seed augments alike on any device."""
    return (low + torch.rand(images.shape[0], generator=generator) * (high - low)).to(images.device)[:, None, None]


def augment_batch(images, flip=True, rotate_degrees=10.0, zoom=0.1, translate=0.1, generator=None):
    """Random flip, rotation, zoom and shift of float images [B, C, H, W], as one bilinear grid_sample: for
    each output pixel, the point of the input it shows. "border" padding repeats the edge pixels, like the
    original project's Keras ImageDataGenerator(fill_mode="nearest")."""
    height, width = images.shape[-2], images.shape[-1]

    def uniform():
        return per_image_uniform(images, -1, 1, generator)

    mirrored = per_image_uniform(images, 0, 1, generator) < (0.5 if flip else 0)
    if not (rotate_degrees or zoom or translate):
        return torch.where(mirrored[:, None], images.flip(-1), images) if flip else images
    angle, scale = uniform() * math.radians(rotate_degrees), 1 + uniform() * zoom
    shift_x, shift_y = uniform() * translate * 2, uniform() * translate * 2  # the image spans [-1, 1]: width 2
    # The centres of the output's pixels in grid_sample's coordinates (align_corners=False: the input
    # spans [-1, 1]). Built by hand rather than with F.affine_grid: 2.2x faster on 2 CPU cores.
    ys = torch.linspace(1 / height - 1, 1 - 1 / height, height, device=images.device)[:, None]
    xs = torch.linspace(1 / width - 1, 1 - 1 / width, width, device=images.device)[None, :]
    xs = torch.where(mirrored, -xs, xs)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    grid = torch.stack([cos * xs - sin * ys + shift_x, sin * xs + cos * ys + shift_y], -1).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter_brightness_contrast(images, strength, generator=None):
    """Photometric augmentation: each image's contrast about its own mean gray, then its brightness,
    scaled by independent factors in [1 - strength, 1 + strength] and clipped to [0, 1] (torchvision's
    ColorJitter on one channel). FER-2013's faces are web photos of every exposure."""
    def factor():  # [B, 1, 1, 1]: one factor per image, for all its channels and pixels
        return 1 + per_image_uniform(images, -1, 1, generator)[:, None] * strength

    mean = images.mean((-2, -1), keepdim=True)
    return (((images - mean) * factor() + mean) * factor()).clamp(0, 1)


# -----------------------------------------------------------------------------
# Models: every model takes float images [B, 1, 48, 48] in [0, 1] and returns 7 logits

# Mean and std of FER-2013's training pixels (in [0, 1]), measured on the real data.
FER_MEAN, FER_STD = 0.508, 0.255


class BaselineCNN(nn.Module):
    """The original project's CNN: three conv -> ReLU -> max-pool blocks (32, 64, 128 channels),
    then Flatten -> Dropout(0.5) -> FC(512) -> ReLU -> Dropout(0.5) -> FC(7). `width` (the channels
    of the first conv) makes tiny test models; its default is the original network."""

    def __init__(self, num_classes=len(EMOTIONS), width=32):
        super().__init__()
        layers, channels = [], 1
        for out_channels in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        side = IMAGE_SIZE // 8  # three 2x2 poolings: 48 -> 6
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(channels * side * side, 512), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(512, num_classes))

    def forward(self, images):
        return self.classifier(self.features((images - FER_MEAN) / FER_STD))


class VGGNet(nn.Module):
    """A network designed for 48x48 faces: Khaireddin & Chen's VGGNet for FER-2013 (2021), narrowed.

    Four stages of 3x3 conv -> BatchNorm -> ReLU (one conv in the first stage, two in the others), each pooled
    2x2 (48 -> 24 -> 12 -> 6 -> 3), widths w, 2w, 4w, 8w; then global average pooling -> Dropout -> FC(7).
    The paper's is 64..512 wide with two 4096-wide FC layers (30 M parameters); this one has 1.17 M. Faster at
    the same accuracy: one conv, not two, on the largest maps (23%), and each stage's last conv pooled before
    its BatchNorm and ReLU (airbench's order; 10%), which commute with max-pooling at a positive BN scale."""

    def __init__(self, num_classes=len(EMOTIONS), width=32, dropout=0.3):
        super().__init__()
        layers, channels = [], 1
        for stage_convs, out_channels in zip((1, 2, 2, 2), (width, 2 * width, 4 * width, 8 * width)):
            for conv in range(stage_convs):
                layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=False))
                if conv == stage_convs - 1:
                    layers.append(nn.MaxPool2d(2))
                layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
                channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(channels, num_classes))

    def forward(self, images):
        return self.classifier(self.features((images - FER_MEAN) / FER_STD))


# ImageNet's normalisation for a gray image: the mean of the per-channel (R, G, B) values
# (0.485, 0.456, 0.406) and (0.229, 0.224, 0.225).
IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226
# The attribute holding each torchvision network's ImageNet classifier, which we replace.
HEAD_ATTRIBUTE = {"resnet18": "fc", "vgg16": "classifier", "mobilenet_v2": "classifier"}
# How many blocks TransferNet.blocks() splits each backbone into (--unfreeze and --feature-block count them).
BLOCKS = {"resnet18": 5, "vgg16": 5, "mobilenet_v2": 19}


class TransferNet(nn.Module):
    """A torchvision ImageNet network for FER: 48x48 faces upsampled to `input_size`, a 1-channel
    first conv, the ImageNet classifier replaced by global average pooling -> Dropout -> FC(7).

    At 48x48 the stock networks (stride 32) end on a 2x2 feature map, too coarse for faces;
    upsampling gives the pretrained filters faces at a scale closer to ImageNet's objects."""

    def __init__(self, arch, input_size=96, feature_block=None):
        super().__init__()
        import torchvision

        self.arch, self.input_size, self.feature_block = arch, input_size, feature_block
        self.backbone = getattr(torchvision.models, arch)(weights=None)
        if arch == "vgg16":  # VGG's 7x7 pooling + 120M-parameter classifier -> global average pooling
            self.backbone.avgpool = nn.AdaptiveAvgPool2d(1)
        feature_size = {"resnet18": 512, "vgg16": 512, "mobilenet_v2": 1280}[arch]
        setattr(self.backbone, HEAD_ATTRIBUTE[arch], nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(feature_size, len(EMOTIONS)))
        self.frozen_blocks = []
        if feature_block:
            # Mid-level features: the map after `feature_block` blocks, its layout kept (mouth and eyes are in
            # known places), into a small head: a 1x1 conv to 128 channels, one linear layer over all positions.
            self.backbone.eval()  # measuring the map's shape must not touch BatchNorm statistics
            with torch.no_grad():
                rgb_or_gray = first_conv(self.backbone)[1].in_channels
                face = torch.zeros(1, rgb_or_gray, IMAGE_SIZE, IMAGE_SIZE)
                channels, height, width = self.features(face).shape[1:]
            self.backbone.train()
            self.head = nn.Sequential(nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
                                      nn.Flatten(), nn.Dropout(0.5), nn.Linear(128 * height * width, len(EMOTIONS)))

    def features(self, images):
        images = F.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False)
        images = (images - IMAGENET_MEAN) / IMAGENET_STD
        if not self.feature_block:
            return self.backbone(images)
        for block in self.blocks()[:self.feature_block]:
            for layer in block:
                images = layer(images)
        return images

    def forward(self, images):
        if images.shape[1] != 1:  # cached backbone features (feature extraction), not images: only the head runs
            return self.head(images)
        return self.head(self.features(images))

    def blocks(self):
        """The backbone's stages, input to output: the units that --unfreeze N counts from the top."""
        net = self.backbone
        if self.arch == "resnet18":
            return [[net.conv1, net.bn1, net.relu, net.maxpool], [net.layer1], [net.layer2], [net.layer3], [net.layer4]]
        if self.arch == "vgg16":  # the five conv stages, each ending in a max-pool
            stages, stage = [], []
            for layer in net.features:
                stage.append(layer)
                if isinstance(layer, nn.MaxPool2d):
                    stages, stage = stages + [stage], []
            return stages
        return [[block] for block in net.features]  # mobilenet_v2: 19 blocks

    def drop_unused_blocks(self):
        """With --feature-block N the blocks above N never run: replace them by nothing, so that they
        neither fill the checkpoint (MobileNetV2 above block 13: 2 M parameters) nor count as the model's size."""
        names = {module: name for name, module in self.backbone.named_modules()}
        for block in self.blocks()[self.feature_block:]:
            for layer in block:
                parent, _, attribute = names[layer].rpartition(".")
                setattr(self.backbone.get_submodule(parent), attribute, nn.Identity())

    def freeze(self, unfreeze):
        """Train only the head and the top `unfreeze` blocks ("all": every block)."""
        blocks = self.blocks()
        trainable = len(blocks) if unfreeze == "all" else int(unfreeze)
        self.frozen_blocks = blocks[:len(blocks) - trainable]
        for block in blocks:
            for parameter in nn.ModuleList(block).parameters():
                parameter.requires_grad = block not in self.frozen_blocks

    def train(self, mode=True):
        # Frozen blocks stay in eval mode: their BatchNorm layers keep the pretrained running
        # statistics instead of drifting towards FER batches they cannot adapt to.
        super().train(mode)
        for block in self.frozen_blocks:
            nn.ModuleList(block).eval()
        return self


def first_conv(module):
    return next((name, layer) for name, layer in module.named_modules() if isinstance(layer, nn.Conv2d))


def convert_to_grayscale(model):
    """Replace the RGB first conv by a 1-channel conv with the sum of the RGB filters. A gray image has
    R = G = B, so the RGB conv computes (W_red + W_green + W_blue) * gray: the summed filters give the same
    activations for a third of the cost, and all after them (frozen BatchNorm statistics too) sees the same."""
    name, conv = first_conv(model.backbone)
    gray = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        gray.weight.copy_(conv.weight.sum(1, keepdim=True))
        if conv.bias is not None:
            gray.bias.copy_(conv.bias)
    parent, _, attribute = name.rpartition(".")
    setattr(model.backbone.get_submodule(parent), attribute, gray)


def load_backbone_weights(model, state_dict, source):
    """Load a torchvision state dict into the backbone: its classifier is ignored, every other tensor must
    match, so that a wrong file fails loudly instead of silently leaving random weights."""
    head = HEAD_ATTRIBUTE[model.arch] + "."
    state_dict = {key: value for key, value in state_dict.items() if not key.startswith(head)}
    missing, unexpected = model.backbone.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise DataError(f"{source}: not a {model.arch} backbone; missing keys {missing[:4]}, "
                        f"unexpected keys {unexpected[:4]} (of {len(missing)} and {len(unexpected)})")


def build_model(config, backbone_weights=None):
    """Rebuild a model from a run's config: the only place that maps settings to a network.
    `backbone_weights`: a pretrained torchvision state dict to start a transfer model from."""
    if config["arch"] == "baseline":
        return BaselineCNN(width=config["width"])
    if config["arch"] == "vggnet":
        return VGGNet(width=config["width"])
    if config["arch"] in HEAD_ATTRIBUTE:
        model = TransferNet(config["arch"], config["input_size"], config["feature_block"])
        if backbone_weights is not None:
            load_backbone_weights(model, backbone_weights, config["weights_path"] or config["weights"])
        if model.feature_block:
            model.drop_unused_blocks()
        convert_to_grayscale(model)
        model.freeze(config["unfreeze"])
        return model
    raise ValueError(f"unknown architecture {config['arch']!r}")


def count_parameters(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# -----------------------------------------------------------------------------
# Training loop: devices and torchrun, the schedule, the optimizer, one epoch, a whole run


def pick_device(requested=None):
    """The torch.device of --device, or the GPU when there is one; a device this machine lacks is a DataError."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:  # torch lists all twenty device types it knows; these are the ones to try
            raise DataError(f"--device {requested}: not a device; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DataError(f"--device {requested}: no CUDA GPU is available here; use --device cpu")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise DataError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                            f"numbered from 0")
        return device
    # Under torchrun each process on a machine takes its own GPU.
    return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")


def native_bf16(device):
    """Whether `device` computes in bfloat16 natively: a CUDA GPU from Ampere on, or a CPU with bf16
    instructions (AVX-512 BF16 or AMX). `--amp auto` autocasts only there: elsewhere bf16 is emulated,
    and VGGNet trains 15x slower in it than in float32."""
    if device.type == "cuda":
        # torch.cuda.is_bf16_supported asks about the current GPU, not `device`: the same test, for this one.
        return bool(torch.version.hip) or torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


# Distributed (torchrun): the same scripts run as N processes, each with a shard of every batch.
def init_distributed():
    """Join torchrun's process group when torchrun started us (it sets RANK and WORLD_SIZE);
    otherwise do nothing. Only rank 0 prints; the others' output would repeat it."""
    if "RANK" not in os.environ or dist.is_initialized():
        return
    if torch.cuda.is_available():  # NCCL for CUDA tensors (one GPU per process), gloo for CPU tensors
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    # A rank that dies makes the others' next collective fail after this timeout instead of hanging.
    dist.init_process_group(backend, timeout=timedelta(seconds=int(os.environ.get("FER_DIST_TIMEOUT", 300))))
    atexit.register(leave_process_group)
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")


def leave_process_group():
    # Rank 0 hosts the store the others talk through: a rank still shutting down when rank 0
    # has gone aborts ("terminate called without an active exception"), so all leave together.
    dist.barrier()
    dist.destroy_process_group()


def rank_and_world_size():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def sum_across_ranks(numbers, device):
    """Each number summed over all processes (every process gets the sums); alone: unchanged."""
    if not dist.is_initialized():
        return numbers
    tensor = torch.tensor(numbers, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def learning_rate(config, step, total_steps, plateau_factor):
    """Learning rate at optimiser step `step`. "cosine": linear warm-up over the first `warmup` fraction of
    the steps, then cosine decay to zero (short runs converge much further than at a constant rate).
    "plateau": the base rate times a factor halved when validation stalls (the original's ReduceLROnPlateau)."""
    if config["schedule"] == "plateau":
        return config["lr"] * plateau_factor
    warmup_steps = max(1, round(config["warmup"] * total_steps))
    if step < warmup_steps:
        return config["lr"] * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return config["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model, config):
    """AdamW or SGD over the trainable parameters. A pretrained backbone learns at `backbone_lr_scale` times
    the head's rate, so that the new, random head does not wreck its features; with `layer_decay` d instead,
    block k from the top learns at d**k times the head's rate: the most generic, low-level filters move least."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    backbone = [p for name, p in trainable if name.startswith("backbone.")]
    groups = [{"params": [p for name, p in trainable if not name.startswith("backbone.")], "lr_scale": 1.0}]
    if backbone and config["layer_decay"]:
        for k, block in enumerate(reversed(model.blocks()), start=1):
            params = [p for layer in block for p in layer.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr_scale": config["layer_decay"] ** k})
    elif backbone:
        groups.append({"params": backbone, "lr_scale": config["backbone_lr_scale"]})
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=config["lr"], momentum=0.9, nesterov=True,
                               weight_decay=config["weight_decay"])
    return torch.optim.AdamW(groups, lr=config["lr"], weight_decay=config["weight_decay"])


def autocast(device, enabled):
    # bfloat16 keeps float32's range, so no loss scaling is needed (unlike float16).
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def as_model_input(batch):
    """uint8 images [B, 48, 48] -> float [B, 1, 48, 48] in [0, 1]. Anything else (the cached
    feature vectors of feature extraction) is already model input."""
    return batch.unsqueeze(1).float() / 255 if batch.dtype == torch.uint8 else batch


@torch.no_grad()
def update_ema(ema, model, decay, step):
    """ema <- decay * ema + (1 - decay) * model, for every weight and BatchNorm statistic. Early on
    the decay is lower ((1 + step) / (10 + step)), so the average forgets its random start quickly."""
    decay = min(decay, (1 + step) / (10 + step))
    model = getattr(model, "module", model)  # under DDP, the wrapped model
    pairs = [(a, b) for a, b in zip(ema.state_dict().values(), model.state_dict().values()) if a.is_floating_point()]
    torch._foreach_lerp_([a for a, _ in pairs], [b for _, b in pairs], 1 - decay)


def train_one_epoch(model, optimizer, loss_function, images, labels, config, epoch, progress, ema=None, targets=None):
    """One pass over a shuffled copy of the training set; updates `ema` (an averaged copy) if given.
    The loss fits `targets` (FER+ vote distributions [N, 7]) where given, else `labels`.
    Returns (summed loss, correct predictions, images seen, images/s) of this process."""
    model.train()
    device = images.device
    batch_size = config["batch_size"]
    rank, world_size = rank_and_world_size()
    # Drop the ragged last batch (each epoch sees another shuffle); a set smaller than one batch is one batch.
    steps = max(1, len(images) // batch_size)
    seen = 0
    # The order depends on (seed, epoch) only: the same after a resume, and the same in every
    # process, each of which takes its own shard of every batch.
    shuffle = torch.Generator().manual_seed(config["seed"] * 1000 + epoch)
    order = torch.randperm(len(images), generator=shuffle).to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    start = time.perf_counter()
    for step in range(steps):
        global_step = (epoch - 1) * steps + step
        rate = learning_rate(config, global_step, config["epochs"] * steps, progress["plateau_factor"])
        for group in optimizer.param_groups:
            group["lr"] = rate * group["lr_scale"]
        batch = order[step * batch_size:(step + 1) * batch_size][rank::world_size]
        inputs = as_model_input(images[batch])
        if images.dtype == torch.uint8:
            inputs = augment_batch(inputs, flip=config["flip"], rotate_degrees=config["rotate"],
                                   zoom=config["zoom"], translate=config["translate"])
            if config["jitter"]:
                inputs = jitter_brightness_contrast(inputs, config["jitter"])
        batch_targets = labels[batch] if targets is None else targets[batch]
        with autocast(device, config["amp"]):
            logits = model(inputs)
            loss = loss_function(logits.float(), batch_targets)  # CrossEntropyLoss takes class probabilities too
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            update_ema(ema, model, config["ema"], global_step)
        loss_sum += loss.detach() * len(batch)
        correct += (logits.argmax(1) == labels[batch]).sum()
        seen += len(batch)
        if sys.stdout.isatty() and step % 20 == 0:
            print(f"\r  epoch {epoch}: {seen}/{steps * batch_size} images, loss {loss_sum.item() / seen:.3f}, "
                  f"{seen / (time.perf_counter() - start):.0f} images/s", end="", flush=True)
    if sys.stdout.isatty():
        print("\r" + " " * 80 + "\r", end="")
    return loss_sum.item(), correct.item(), seen, seen / (time.perf_counter() - start)


def train(model, data, config, run_dir):
    """Train `model` on data["train"], select on data["val"]; write everything into `run_dir`. If it holds
    last.pt, training continues from there: each epoch reseeds torch from (seed, epoch), so the shuffle,
    augmentation and dropout of epoch k are the same whether or not the run was interrupted before it."""
    device = torch.device(config["device"])
    rank, world_size = rank_and_world_size()
    # channels_last (NHWC): the layout the fastest oneDNN and cuDNN convolution kernels take (bench.py times both).
    model.to(device, memory_format=torch.channels_last)
    # The whole training set stays on the device as uint8 (28,709 x 48 x 48 = 66 MB): batches
    # are index slices, so there is no DataLoader and no worker process.
    train_images = data["train"]["images"].to(device)
    train_labels = data["train"]["labels"].to(device)
    train_targets = data["train"]["targets"].to(device) if "targets" in data["train"] else None
    optimizer = make_optimizer(model, config)
    loss_function = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
    progress = {"epoch": 0, "best_val_acc": -1.0, "epochs_since_best": 0, "plateau_factor": 1.0,
                "elapsed_s": 0.0, "history": []}
    if (run_dir / "last.pt").exists():
        checkpoint = load_checkpoint(run_dir / "last.pt", device, keys=("model", "optimizer", "progress"))
        load_state(model, checkpoint["model"], run_dir / "last.pt")
        load_state(optimizer, checkpoint["optimizer"], run_dir / "last.pt")
        progress = checkpoint["progress"]
        print(f"resuming {run_dir} after epoch {progress['epoch']}")
    # Distributed: DDP averages the gradients of all processes in backward(), so every process
    # takes the same step, the one a single process would take on the whole batch.
    training_model = DistributedDataParallel(model) if world_size > 1 else model
    # EMA: validate, select and save an exponential moving average of the weights instead of the
    # weights themselves; the raw weights' validation accuracy is logged beside it (val_acc_raw).
    ema = None
    if config["ema"]:
        ema = copy.deepcopy(model).requires_grad_(False)
        if (run_dir / "last.pt").exists():
            load_state(ema, checkpoint["ema"], run_dir / "last.pt")

    start = time.perf_counter() - progress["elapsed_s"]
    first_epoch, elapsed_before = progress["epoch"] + 1, progress["elapsed_s"]
    try:
        for epoch in range(progress["epoch"] + 1, config["epochs"] + 1):
            # Augmentation and dropout: a seed of its own for every (seed, epoch), so a resumed run
            # repeats them exactly, and for every process (7919, a prime, keeps the seeds apart).
            torch.manual_seed(config["seed"] * 1000 + epoch + 7919 * rank)
            loss_sum, correct, seen, images_per_s = train_one_epoch(
                training_model, optimizer, loss_function, train_images, train_labels, config, epoch, progress, ema,
                train_targets)
            # Each process validates a shard; the sums over all shards give every process the same numbers.
            val_images, val_labels = data["val"]["images"][rank::world_size], data["val"]["labels"][rank::world_size]
            val = evaluate(ema or model, val_images, val_labels, device, config["amp"])
            raw_val_acc = evaluate(model, val_images, val_labels, device, config["amp"])["accuracy"] if ema else None
            loss_sum, correct, seen, images_per_s, val_loss_sum, val_correct, val_count = sum_across_ranks(
                [loss_sum, correct, seen, images_per_s, val["loss"] * len(val_labels),
                 val["accuracy"] * len(val_labels), len(val_labels)], device)
            train_loss, train_acc, val_loss, val_acc = loss_sum / seen, correct / seen, val_loss_sum / val_count, val_correct / val_count
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training loss became {train_loss} in epoch {epoch}; "
                                         f"try a lower --lr (now {config['lr']})")
            elapsed = time.perf_counter() - start
            progress["history"].append({
                "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": images_per_s, "elapsed_s": elapsed,
                **({"val_acc_raw": sum_across_ranks([raw_val_acc * len(val_labels)], device)[0] / val_count} if ema else {})})
            improved = val_acc > progress["best_val_acc"]
            progress.update(epoch=epoch, elapsed_s=elapsed,
                            epochs_since_best=0 if improved else progress["epochs_since_best"] + 1)
            if improved:
                progress["best_val_acc"] = val_acc
            if config["schedule"] == "plateau" and progress["epochs_since_best"] >= config["plateau_patience"] \
                    and progress["epochs_since_best"] % config["plateau_patience"] == 0:
                progress["plateau_factor"] *= 0.5
            if rank == 0:  # one process writes the run folder
                if improved:
                    save_atomically({"model": (ema or model).state_dict(), "config": config, "epoch": epoch,
                                     "val_acc": val_acc}, run_dir / "best.pt")
                save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "progress": progress, "config": config,
                                 **({"ema": ema.state_dict()} if ema else {})}, run_dir / "last.pt")
                write_metrics(progress["history"], run_dir)
            seconds_per_epoch = (elapsed - elapsed_before) / (epoch - first_epoch + 1)
            clock = timedelta(seconds=round(elapsed))
            eta = timedelta(seconds=round(seconds_per_epoch * (config["epochs"] - epoch)))
            print(f"epoch {epoch:3d}/{config['epochs']}  train loss {train_loss:.3f} acc {train_acc:6.2%}  "
                  f"val loss {val_loss:.3f} acc {val_acc:6.2%}{' *' if improved else '  '}  "
                  f"lr {optimizer.param_groups[0]['lr']:.2e}  {images_per_s:4.0f} img/s  "
                  f"elapsed {clock}  eta {eta}", flush=True)
            if config["early_stop"] and progress["epochs_since_best"] >= config["early_stop"]:
                print(f"early stop: no validation improvement for {config['early_stop']} epochs")
                break
    except KeyboardInterrupt:
        print(f"\ninterrupted: {run_dir / 'last.pt'} holds epoch {progress['epoch']}; "
              f"continue with --resume {run_dir}")
        progress["interrupted"] = True
        return progress
    if progress["history"]:
        best_epoch = max(progress["history"], key=lambda row: row["val_acc"])["epoch"]
        print(f"best validation accuracy {progress['best_val_acc']:.2%} (epoch {best_epoch}); "
              f"evaluate with: python evaluate.py --run {run_dir}")
    return progress


# -----------------------------------------------------------------------------
# Evaluation


# Ten-view TTA shifts the face by this many pixels (of 48) left, right, up and down: the best of 1 to 4
# on PublicTest. Training shifts by up to 4.8 pixels.
TTA_SHIFT = 2


def test_time_views(batch, tta):
    """The views of float images [B, 1, H, W] whose predictions are averaged. False: the image alone. "flip"
    (or True): the image and its mirror image. "ten": the image shifted by 0 or TTA_SHIFT pixels in each of four
    directions, each also mirrored; shifts rather than FER papers' ten 40x40 crops, as our networks take the
    whole 48x48 face. The edge pixels are repeated into the gap, as in training."""
    if not tta:
        return [batch]
    views = [batch]
    if tta == "ten":
        s = TTA_SHIFT
        padded = F.pad(batch, (s, s, s, s), mode="replicate")
        height, width = batch.shape[-2:]
        views += [padded[..., s + dy:s + dy + height, s + dx:s + dx + width]
                  for dx, dy in ((s, 0), (-s, 0), (0, s), (0, -s))]
    return views + [view.flip(-1) for view in views]


@torch.inference_mode()
def view_probabilities(model, images, device, amp=False, tta=False, batch_size=512):
    """Class probabilities [V, N, 7] of uint8 images [N, 48, 48], one row for each of test_time_views(tta)."""
    model.eval()
    probabilities = []
    for start in range(0, len(images), batch_size):
        batch = as_model_input(images[start:start + batch_size].to(device))
        with autocast(device, amp):
            probabilities.append(torch.stack([model(view).float().softmax(1)
                                              for view in test_time_views(batch, tta)]).cpu())
    return torch.cat(probabilities, dim=1)


def predict_probabilities(model, images, device, amp=False, tta=False, batch_size=512):
    """Class probabilities [N, 7] for uint8 images [N, 48, 48], averaged over test_time_views(tta)."""
    return view_probabilities(model, images, device, amp, tta, batch_size).mean(0)


def evaluate(model, images, labels, device, amp=False, tta=False):
    probabilities = predict_probabilities(model, images, device, amp, tta)
    return {"loss": F.nll_loss(probabilities.clamp(min=1e-12).log(), labels).item(),
            "accuracy": (probabilities.argmax(1) == labels).float().mean().item(),
            "probabilities": probabilities}


# -----------------------------------------------------------------------------
# Run folders: runs/<timestamp>-<name>/ holds config.json (written by train_baseline.py), metrics.jsonl,
# curves.png, best.pt and last.pt; a model is rebuilt from them alone


def save_atomically(obj, path):
    """torch.save to a temporary file, then rename: an interrupted save never leaves half a file."""
    temporary = Path(path).with_suffix(f".tmp{os.getpid()}")  # two processes may write the same file
    torch.save(obj, temporary)
    os.replace(temporary, path)


def pickle_is_whole(path):
    """Whether the pickle torch.load reads first in `path` (data.pkl in the zip archive torch.save writes,
    else the file itself) is whole: pickletools parses its opcodes to the end without running any of them."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                [name] = [name for name in archive.namelist() if name.endswith("/data.pkl")]
                data = archive.read(name)
        else:
            data = Path(path).read_bytes()
        list(pickletools.genops(data))  # stops at the pickle's STOP opcode; raises on a cut or unknown one
        return True
    except Exception:
        return False


def load_checkpoint(path, device, keys=("model", "config")):
    """The dict that train() saved in `path` (best.pt or last.pt), checked to hold `keys`; any other file is
    a DataError naming it. weights_only=True unpickles tensors, numbers, strings and containers only: a .pt
    file is a pickle, and one from elsewhere could run code when loaded."""
    path = Path(path)
    if not path.is_file():
        if path.parent.resolve() == Path(RELEASED_RUN).resolve():  # predict.py, gradcam.py, export.py default to it
            raise DataError(f"{path.parent}: this copy has no released model; name a run folder with --run runs/DIR "
                            f"(or release one: make release RUN=runs/DIR)")
        raise DataError(f"{path}: no checkpoint; expected a run folder written by train_*.py")
    try:
        with warnings.catch_warnings():  # on a damaged file torch warns about its pickle protocol first
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    # torch.load only reads, so whatever it raises means the file is no checkpoint: a zip cut short is a
    # RuntimeError, an empty file an EOFError. A whole pickle that the safe unpickler still refuses (an
    # UnpicklingError) was written to hold more than tensors: Python objects, which could run code when
    # loaded, or pickle protocol 0, 1, 4 or 5, which the safe unpickler does not read (torch.save writes 2).
    except Exception as error:
        if isinstance(error, pickle.UnpicklingError) and pickle_is_whole(path):
            raise DataError(f"{path}: refused, not loaded: not a plain checkpoint (its pickle holds Python "
                            f"objects, which could run code, or is in a pickle protocol other than torch.save's); "
                            f"expected a checkpoint written by train_*.py") from None
        raise DataError(f"{path}: truncated or damaged ({type(error).__name__}); "
                        f"expected a checkpoint written by train_*.py") from None
    if not isinstance(checkpoint, dict) or not set(keys) <= checkpoint.keys():
        found = (f"keys {', '.join(map(str, list(checkpoint)[:5]))}" if isinstance(checkpoint, dict)
                 else f"a {type(checkpoint).__name__}")
        raise DataError(f"{path}: not a checkpoint written by train_*.py; expected {', '.join(keys)}, found {found}")
    return checkpoint


def load_state(target, state, path):
    """target.load_state_dict(state) (a model, its EMA copy or an optimizer); a mismatch, such as weights
    of another size than the run's config gives the model, is a DataError naming the checkpoint `path`."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        # torch lists one problem per line after a heading: show the first, and how many more there are.
        problems = [line.strip() for line in str(error).splitlines()[1:] if line.strip()] or [str(error)]
        more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise DataError(f"{path}: does not fit the {type(target).__name__} the run's config describes "
                        f"({problems[0].rstrip('.')[:200]}{more})") from None


def load_run(run_dir, device, checkpoint="best.pt"):
    """(model with the run's best weights, the run's config), rebuilt from the run folder alone."""
    path = Path(run_dir) / checkpoint
    state = load_checkpoint(path, device)
    try:
        model = build_model(state["config"])
    except (KeyError, ValueError, TypeError, AttributeError) as error:  # a config edited, or from other code
        raise DataError(f"{path}: its config does not describe a model this code builds ({error!r})") from None
    load_state(model, state["model"], path)
    return model.to(device), state["config"]


def write_metrics(history, run_dir):
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
    plot_curves(history, run_dir / "curves.png")


def plot_curves(history, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("val", "--")):
        loss_axes.plot(epochs, [row[f"{split}_loss"] for row in history], style, label=split)
        accuracy_axes.plot(epochs, [100 * row[f"{split}_acc"] for row in history], style, label=split)
    loss_axes.set(title="loss", xlabel="epoch")
    accuracy_axes.set(title="accuracy (%)", xlabel="epoch")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
