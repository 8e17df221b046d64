"""
Train the seed's baseline CNN on FER-2013 and write a run folder under runs/.

    python train_baseline.py                          # the fast default recipe
    python train_baseline.py --epochs 5               # a quick run
    python train_baseline.py --resume runs/DIR        # continue an interrupted run
    python train_baseline.py --optimizer adamw --lr 1e-3 --weight-decay 0 --schedule plateau \\
        --epochs 50 --early-stop 10 --batch-size 64 --label-smoothing 0   # the seed's recipe
"""
import argparse
import sys

import torch

import fer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fer.add_training_arguments(parser, epochs=80, batch_size=128, optimizer="adamw", lr=2e-3, weight_decay=5e-4,
                               schedule="cosine", warmup=0.1, label_smoothing=0.1)
    parser.add_argument("--width", type=int, default=32, help="channels of the first conv (default: %(default)s)")
    parser.add_argument("--batch-norm", action="store_true", help="add BatchNorm after each conv (a variant)")
    args = parser.parse_args()

    fer.init_distributed()  # a no-op unless started by torchrun
    try:
        config, run_dir = fer.resolve_config(args, arch="baseline")
        data = fer.load_fer2013(config["data"], seed=config["seed"])
        run_dir = run_dir or fer.make_run_dir(config)
        torch.manual_seed(config["seed"])
        model = fer.build_model(config)
        print(f"{run_dir}: {fer.count_parameters(model):,} parameters, {len(data['train']['labels']):,} training "
              f"images, device {config['device']}, bf16 autocast {'on' if config['amp'] else 'off'}")
        progress = fer.train(model, data, config, run_dir)
    except (fer.DataError, FloatingPointError) as error:  # bad input, or a loss that became NaN
        sys.exit(f"error: {error}")
    if progress.get("interrupted"):
        sys.exit(130)

if __name__ == "__main__":
    main()
