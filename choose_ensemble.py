"""
Choose an ensemble on PublicTest, the split models are selected on: every combination of the given runs
whose members trained for at most --budget minutes in all is scored by the ten-view TTA accuracy of the
mean of its members' probabilities. PrivateTest is never read; the script ends with the command that
evaluates its pick there.

    python choose_ensemble.py runs/A runs/B runs/C --budget 180
    make choose-ensemble RUNS="runs/A runs/B runs/C"

Each run's probabilities are computed once, so the 2^n - 1 combinations of n runs cost n evaluations
(ten forward passes of the 3,589 PublicTest faces each), and kept in the run folder (publictest_ten_view.pt,
recomputed when best.pt is newer): choosing again with one more run costs one evaluation.
"""
import argparse
import itertools
import sys
from pathlib import Path

import torch

import compare
import fer


def publictest_probabilities(run, data, device):
    """The run's ten-view class probabilities [N, 7] on PublicTest, in float32 as evaluate.py computes them."""
    cache, best = Path(run) / "publictest_ten_view.pt", Path(run) / "best.pt"
    if cache.exists() and best.exists() and cache.stat().st_mtime >= best.stat().st_mtime:
        probabilities = torch.load(cache, weights_only=True)
        if probabilities.shape == (len(data["val"]["labels"]), len(fer.EMOTIONS)):
            return probabilities
    model, _ = fer.load_run(run, device)
    probabilities = fer.predict_probabilities(model, data["val"]["images"], device, tta="ten")
    torch.save(probabilities, cache)
    return probabilities


def rank_combinations(probabilities, labels, minutes, budget):
    """[(accuracy, minutes, runs)] for every combination within `budget` minutes, best first (on a tie,
    the cheaper first). `probabilities` and `minutes` map each run to its [N, 7] probabilities and its minutes."""
    runs, ranked = list(probabilities), []
    for size in range(1, len(runs) + 1):
        for combination in itertools.combinations(runs, size):
            total = sum(minutes[run] for run in combination)
            if total <= budget:
                mean = torch.stack([probabilities[run] for run in combination]).mean(0)
                ranked.append(((mean.argmax(1) == labels).float().mean().item(), total, combination))
    return sorted(ranked, key=lambda row: (-row[0], row[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders written by train_*.py")
    parser.add_argument("--budget", type=float, default=180.0, help="most training minutes of all members "
                        "together (default: %(default)s)")
    parser.add_argument("--top", type=int, default=10, help="combinations to list (default: %(default)s)")
    parser.add_argument("--data", default=fer.DEFAULT_DATA, help="Kaggle-layout folder or fer2013.csv "
                        "(default: $FER_DATA or %(default)s; the path in a run's config.json is only a record)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    args = parser.parse_args()

    probabilities, minutes = {}, {}
    try:
        device = fer.pick_device(args.device)
        config = fer.load_checkpoint(Path(args.runs[0]) / "best.pt", "cpu")["config"]
        data = fer.load_fer2013(args.data, seed=config["seed"])
        for run in args.runs:
            probabilities[run] = publictest_probabilities(run, data, device)
            minutes[run] = compare.training_minutes(run)
            accuracy = (probabilities[run].argmax(1) == data["val"]["labels"]).float().mean().item()
            print(f"{run}: PublicTest ten-view {accuracy:.2%}, trained {minutes[run]:.1f} min", flush=True)
    except fer.DataError as error:
        sys.exit(f"error: {error}")
    ranked = rank_combinations(probabilities, data["val"]["labels"], minutes, args.budget)
    if not ranked:
        sys.exit(f"error: every run alone trained longer than --budget {args.budget:g} minutes")
    print(f"\n{len(ranked)} of {2 ** len(args.runs) - 1} combinations train within {args.budget:g} minutes; "
          f"the best on PublicTest (ten-view TTA):")
    for accuracy, total, combination in ranked[:args.top]:
        print(f"  {accuracy:.2%}  {total:6.1f} min  {' + '.join(Path(run).name for run in combination)}")
    print(f"\nthe pick, on PrivateTest:\n  make ensemble RUNS=\"{' '.join(ranked[0][2])}\"")


if __name__ == "__main__":
    main()
