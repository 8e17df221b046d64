"""
Transfer learning from an ImageNet network (resnet18, vgg16, mobilenet_v2) to FER-2013, in one of two modes:

  feature    the pretrained backbone is frozen (BatchNorm statistics too); its features of every image
             (for mobilenet_v2 the map after block 13 of 19: --feature-block) are computed once and cached,
             and only a new 7-class head is trained on them: seconds per epoch;
  finetune   the top --unfreeze blocks (default: all) train too, at --backbone-lr-scale times the head's
             learning rate (or --layer-decay: a rate for each block), with warm-up, on augmented images:
             the same loop as the baseline.

    python train_transfer.py --arch mobilenet_v2 --mode feature --weights-path mobilenet_v2_imagenet_features.pth
    python train_transfer.py --arch resnet18 --mode finetune                   # torchvision's ImageNet weights
    python train_transfer.py --arch mobilenet_v2 --mode finetune --weights none   # from scratch, on purpose

Mode defaults: feature: 30 epochs, batch 256, lr 3e-3; finetune: 24 epochs, batch 64, lr 1e-3.
"""
import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

import fer
import train_baseline  # the training command line and run folder, shared with the from-scratch script

# Feature extraction trains a small head on fixed features: big batches, a high rate, many cheap epochs.
# Fine-tuning moves 2M+ pretrained weights on augmented images: each epoch costs minutes on a CPU.
# Evidence, MobileNetV2 from ImageNet at 96 px (PrivateTest, 2 vCPUs of an AMD EPYC, bf16; docs/experiments.md):
MODE_DEFAULTS = {
    # block 13's features: 61.83% in 3.2 min.
    "feature": dict(epochs=30, batch_size=256, lr=3e-3, unfreeze="0"),
    # 24 epochs: 66.87% in 52 min.
    "finetune": dict(epochs=24, batch_size=64, lr=1e-3, unfreeze="all"),
}
# Feature extraction reads the map after this block, not the pooled end of the backbone: mid-level features,
# with the face's layout kept, beat the last block's by 14.6 points on MobileNetV2 (block chosen on PublicTest).
# The other networks were not measured: their whole backbone (0).
FEATURE_BLOCK = {"mobilenet_v2": 13}
# The recipe's defaults: the flags the two scripts share (train_baseline.add_training_arguments) change some.
RECIPE = dict(optimizer="adamw", weight_decay=1e-4, schedule="cosine", warmup=0.1, label_smoothing=0.1,
              early_stop=0, jitter=0.0)


def parse_config():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--arch", choices=sorted(fer.HEAD_ATTRIBUTE), default="mobilenet_v2", help="(default: %(default)s)")
    add("--mode", choices=["feature", "finetune"], default="finetune", help="(default: %(default)s)")
    add("--weights", choices=["imagenet", "none"], default="imagenet", help="imagenet: torchvision's, "
        "downloaded once into $TORCH_HOME; none: random, from scratch (default: %(default)s)")
    add("--weights-path", metavar="FILE", help="start from this state dict of the torchvision network instead "
        "(its classifier is ignored, every other tensor must match)")
    add("--input-size", type=int, default=96, help="images are upsampled to this size: 96 ends the stride-32 "
        "networks on a 3x3 feature map instead of 2x2 (default: %(default)s)")
    add("--unfreeze", help="finetune: how many top backbone blocks train, or 'all'")
    add("--feature-block", type=int, help="feature: take the features after this many backbone blocks "
        "(mobilenet_v2 has 19, the others 5), into a small head; 0: the whole backbone, pooled, into a linear "
        "head (default: 13 for mobilenet_v2, else 0)")
    add("--backbone-lr-scale", type=float, help="backbone learning rate / head learning rate "
        "(default: 0.1 from pretrained weights, 1 from scratch)")
    add("--layer-decay", type=float, default=0.0, help="finetune: block k from the top learns at this ** k "
        "times the head's rate, instead of --backbone-lr-scale; 0 = off (default: %(default)s)")
    train_baseline.add_training_arguments(parser, **RECIPE)
    args = parser.parse_args()
    for key, value in MODE_DEFAULTS[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.mode == "feature" and args.unfreeze != "0":
        parser.error("--mode feature trains the head only: leave out --unfreeze")
    if args.mode == "finetune" and args.feature_block:
        parser.error("--feature-block is for --mode feature")
    if args.mode == "feature" and args.feature_block is None:
        args.feature_block = FEATURE_BLOCK.get(args.arch, 0)
    blocks = fer.BLOCKS[args.arch]
    if args.feature_block is not None and not 0 <= args.feature_block <= blocks:
        parser.error(f"--feature-block {args.feature_block}: {args.arch} has blocks 1 to {blocks} (0: the whole backbone)")
    if args.layer_decay and args.backbone_lr_scale is not None:
        parser.error("--layer-decay sets each block's learning rate: leave out --backbone-lr-scale")
    if args.weights_path and args.weights == "none":
        parser.error("--weights none and --weights-path contradict each other: choose one")
    if args.weights_path:
        args.weights = "file"
    if args.backbone_lr_scale is None:  # pretrained features need only small steps; random ones need all of them
        args.backbone_lr_scale = 1.0 if args.weights == "none" else 0.1
    args.name = args.name or f"{args.arch}-{args.mode}-{'scratch' if args.weights == 'none' else 'pretrained'}"
    return train_baseline.resolve_config(args, arch=args.arch)


def imagenet_weights(arch):
    """torchvision's ImageNet weights: downloaded once into $TORCH_HOME/hub/checkpoints, then read
    from there. Offline without that file: an error that names the two ways out."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except OSError as error:  # URLError is an OSError
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        raise fer.DataError(
            f"ImageNet weights for {arch} are not in {checkpoints} and cannot be downloaded ({error}). "
            f"Either download {weights.url} into {checkpoints}/, or pass --weights-path FILE "
            f"(a state dict of torchvision's {arch}), or --weights none to train from scratch on purpose") from None


def starting_weights(config):
    """The pretrained state dict a transfer run starts from, or None for --weights none."""
    if config["weights"] == "none":
        return None
    if config["weights"] == "imagenet":
        return imagenet_weights(config["arch"])
    path = Path(config["weights_path"])
    if not path.is_file():
        raise fer.DataError(f"{path}: no such weights file; expected a state dict of torchvision's {config['arch']}")
    return torch.load(path, map_location="cpu", weights_only=True)


@torch.inference_mode()
def cached_features(model, data, config):
    """`data` with each split's images replaced by the backbone's features of them, computed once and
    cached on disk; the split's other entries (labels, FER+ targets) come along untouched.

    In feature extraction the backbone is frozen, so its output for an image never changes: computing
    it once instead of in every epoch makes training the head take seconds. The price is augmentation,
    which would need the features of every augmented view. The cache, keyed by the backbone's weights, its
    settings and the images, holds features only: the labels always come from `data`, so a FER+ run never
    trains on FER-2013's labels from the cache, nor the other way round."""
    settings = [config[key] for key in ("arch", "input_size", "amp", "feature_block")]
    digest = hashlib.sha1(repr(settings).encode())
    for tensor in model.backbone.state_dict().values():
        digest.update(tensor.cpu().float().numpy().tobytes())
    for split in data.values():
        digest.update(split["images"].numpy().tobytes())
    cache_file = fer.CACHE_DIR / f"features-{config['arch']}-{digest.hexdigest()[:16]}.pt"
    if cache_file.exists():
        features = torch.load(cache_file, weights_only=True)
    else:
        device = torch.device(config["device"])
        model.to(device).eval()
        features = {}
        for split, part in data.items():
            print(f"computing {config['arch']} features of the {len(part['images']):,} {split} images", flush=True)
            batches = []
            for start in range(0, len(part["images"]), 256):
                batch = fer.as_model_input(part["images"][start:start + 256]).to(device)
                with fer.autocast(device, config["amp"]):
                    batches.append(model.features(batch).float().cpu())
            features[split] = torch.cat(batches)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fer.save_atomically(features, cache_file)
    # Under "images", so that train() and evaluate() take the features like any split.
    return {split: dict(part, images=features[split]) for split, part in data.items()}


def extract_features(model, data, config, run_dir):
    """The backbone's features of every image (cached), and how long computing them took."""
    start = time.perf_counter()
    features = cached_features(model, data, config)
    seconds = time.perf_counter() - start  # near zero when the features came from the cache
    record = run_dir / "feature_extraction.json"
    if fer.rank_and_world_size()[0] == 0 and not record.exists():  # keep the first measurement on --resume
        record.write_text(json.dumps({"seconds": seconds}) + "\n")
    return features


def main():
    fer.init_distributed()  # a no-op unless started by torchrun
    try:
        config, run_dir = parse_config()
        data = fer.load_training_data(config)
        backbone_weights = None if run_dir else starting_weights(config)
        if config["weights"] == "none":
            print("--weights none: the backbone starts from random weights (training from scratch, on purpose)")
        torch.manual_seed(config["seed"])
        model = fer.build_model(config, backbone_weights)
        if run_dir:  # resuming: the features must come from the run's own backbone, not a fresh one
            fer.load_state(model, fer.load_checkpoint(run_dir / "last.pt", "cpu")["model"], run_dir / "last.pt")
        run_dir = run_dir or train_baseline.make_run_dir(config)
        trainable, total = fer.count_parameters(model, trainable_only=True), fer.count_parameters(model)
        print(f"{run_dir}: {config['arch']} {config['mode']}, weights {config['weights_path'] or config['weights']}, "
              f"input {config['input_size']}px, {trainable:,} of {total:,} parameters train")
        if config["mode"] == "feature":
            data = extract_features(model, data, config, run_dir)
        progress = fer.train(model, data, config, run_dir)
    except (fer.DataError, FloatingPointError) as error:  # bad input, or a loss that became NaN
        sys.exit(f"error: {error}")
    if progress.get("interrupted"):
        sys.exit(130)

if __name__ == "__main__":
    main()
