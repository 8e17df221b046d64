"""
Transfer learning from an ImageNet network (resnet18, vgg16, mobilenet_v2) to FER-2013, in one of two modes:

  feature    the pretrained backbone is frozen (BatchNorm statistics too); its features of every image
             are computed once and cached, and only a new 7-class head is trained on them: seconds per epoch;
  finetune   the top --unfreeze blocks (default: all) train too, at --backbone-lr-scale times the head's
             learning rate, with warm-up, on augmented images: the same loop as the baseline.

    python train_transfer.py --arch mobilenet_v2 --mode feature \
        --weights-path ../shared/weights/mobilenet_v2_imagenet_features.pth
    python train_transfer.py --arch resnet18 --mode finetune                   # torchvision's ImageNet weights
    python train_transfer.py --arch mobilenet_v2 --mode finetune --weights none   # from scratch, on purpose

Mode defaults: feature: 30 epochs, batch 256, lr 3e-3; finetune: 8 epochs, batch 64, lr 1e-3.
"""
import argparse
import json
import sys
import time

import torch

import fer

MODE_DEFAULTS = {"feature": dict(epochs=30, batch_size=256, lr=3e-3, unfreeze="0"),
                 "finetune": dict(epochs=8, batch_size=64, lr=1e-3, unfreeze="all")}


def parse_config():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fer.add_training_arguments(parser, optimizer="adamw", weight_decay=1e-4, schedule="cosine", warmup=0.1,
                               label_smoothing=0.1)
    parser.add_argument("--arch", choices=sorted(fer.HEAD_ATTRIBUTE), default="mobilenet_v2", help="(default: %(default)s)")
    parser.add_argument("--mode", choices=["feature", "finetune"], default="finetune", help="(default: %(default)s)")
    parser.add_argument("--weights", choices=["imagenet", "none"], default="imagenet", help="imagenet: torchvision's, "
                        "downloaded once into $TORCH_HOME; none: random, from scratch (default: %(default)s)")
    parser.add_argument("--weights-path", metavar="FILE", help="start from this state dict of the torchvision "
                        "network instead (its classifier is ignored, every other tensor must match)")
    parser.add_argument("--input-size", type=int, default=96, help="images are upsampled to this size: 96 ends "
                        "the stride-32 networks on a 3x3 feature map instead of 2x2 (default: %(default)s)")
    parser.add_argument("--unfreeze", help="finetune: how many top backbone blocks train, or 'all'")
    parser.add_argument("--backbone-lr-scale", type=float, help="backbone learning rate / head learning rate "
                        "(default: 0.1 from pretrained weights, 1 from scratch)")
    args = parser.parse_args()
    for key, value in MODE_DEFAULTS[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.mode == "feature" and args.unfreeze != "0":
        parser.error("--mode feature trains the head only: leave out --unfreeze")
    if args.weights_path:
        args.weights = "file"
    if args.backbone_lr_scale is None:  # pretrained features need only small steps; random ones need all of them
        args.backbone_lr_scale = 1.0 if args.weights == "none" else 0.1
    args.name = args.name or f"{args.arch}-{args.mode}-{'scratch' if args.weights == 'none' else 'pretrained'}"
    return fer.resolve_config(args, arch=args.arch)


def main():
    fer.init_distributed()  # a no-op unless started by torchrun
    config, run_dir = parse_config()
    try:
        data = fer.load_fer2013(config["data"], seed=config["seed"])
        backbone_weights = None if run_dir else fer.starting_weights(config)
    except fer.DataError as error:
        sys.exit(f"error: {error}")
    if config["weights"] == "none":
        print("--weights none: the backbone starts from random weights (training from scratch, on purpose)")
    torch.manual_seed(config["seed"])
    model = fer.build_model(config, backbone_weights)
    run_dir = run_dir or fer.make_run_dir(config)
    trainable, total = fer.count_parameters(model, trainable_only=True), fer.count_parameters(model)
    print(f"{run_dir}: {config['arch']} {config['mode']}, weights {config['weights_path'] or config['weights']}, "
          f"input {config['input_size']}px, {trainable:,} of {total:,} parameters train")
    if config["mode"] == "feature":
        start = time.perf_counter()
        data = fer.cached_features(model, data, config)
        seconds = time.perf_counter() - start  # near zero when the features came from the cache
        if not (run_dir / "feature_extraction.json").exists():  # keep the first measurement on --resume
            (run_dir / "feature_extraction.json").write_text(json.dumps({"seconds": seconds}) + "\n")
    if fer.train(model, data, config, run_dir).get("interrupted"):
        sys.exit(130)


if __name__ == "__main__":
    main()
