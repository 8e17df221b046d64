"""
Make a run folder the released model: runs/release/, the one folder under runs/ that is committed, so a
fresh clone can predict (predict.py, gradcam.py, export.py use it when no --run is named).

    python release.py --run runs/DIR              # make release RUN=runs/DIR
    python release.py --run runs/A --run runs/B --run runs/C   # the seeds of one recipe: make release RUN="A B C"
    python release.py --run runs/DIR --out DIR    # build a release folder somewhere else

Given the seeds of one recipe, the rule picks the release: the seed with the best PublicTest accuracy, the
split checkpoints are chosen on, never PrivateTest. The card reports every seed's PrivateTest accuracy, so
the release's own number reads beside their mean ± std, not as what the command gives.

The release holds only what inference and the model card need: best.pt stripped to the weights (float32)
and the config, config.json, eval_test.json and confusion_test.png (evaluate.py runs first when the run
has none), metrics.jsonl, curves.png, and RELEASE.md: the source run, its training command, git
commit, checkpoint epoch, PrivateTest accuracy and per-class F1, size. Never last.pt (the optimizer
state for --resume, about three times the weights). An existing release is replaced in one step: the new one
is built in a hidden folder beside it, checked, then swapped in.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import fer

COPIED = ["eval_test.json", "confusion_test.png", "metrics.jsonl", "curves.png"]  # and config.json, rewritten
# Where the run found its data is one machine's layout (a home folder, a mount), not for publishing: the
# release's config.json and best.pt record the project's default place instead.
RELEASED_DATA = "data/fer2013"
# config.json entries that are records, not command-line settings. "data" is where the run found the data on
# the machine that trained it; the command trains on $FER_DATA or data/fer2013, wherever it is run.
NOT_SETTINGS = {"data", "device", "processes", "torch_version", "git_commit", "run_dir"}
# Settings added after some runs were made, with the value those runs had: --jitter joined VGGNet's recipe
# later, and --labels came with the FER+ votes.
BEFORE_IT_EXISTED = {"jitter": 0.0, "labels": "fer2013"}


def script_flags(script, arch):
    """The long options the training script accepts for `arch`, read from its --help: config.json also
    records settings without a flag (fixed in the code), which a command cannot and need not spell out."""
    help_text = subprocess.run([sys.executable, str(fer.PROJECT_DIR / script), "--arch", arch, "--help"],
                               capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text))


def training_command(config):
    """The command that trains this run again, rebuilt from config.json, which holds every resolved
    setting (argparse's namespace): every setting the script has a flag for is spelled out, defaults
    included, so a later change of a recipe's defaults does not change what the command trains."""
    script = "train_transfer.py" if config["arch"] in fer.HEAD_ATTRIBUTE else "train_baseline.py"
    flags = script_flags(script, config["arch"])
    words = [f"torchrun --nproc_per_node={config['processes']}" if config.get("processes", 1) > 1 else "python", script]
    settings = dict(config)
    for key, value in BEFORE_IT_EXISTED.items():
        settings.setdefault(key, value)
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if key in NOT_SETTINGS or value is None or (key == "weights" and value == "file"):
            continue  # weights "file" is what --weights-path sets
        if key == "amp":  # resolved from --amp auto to what this machine did
            words += [flag, "on" if value else "off"]
        elif isinstance(value, bool):  # a switch, --x or --no-x
            flag = flag if value else "--no-" + key.replace("_", "-")
            words += [flag] if flag in flags else []
        elif flag not in flags:
            continue  # no flag: built into the code the card's commit names
        elif key == "weights_path":  # the file's name: where it lies is one machine's layout, like "data"
            words += [flag, shlex.quote(Path(value).name)]
        elif isinstance(value, list):  # nargs options
            words += [flag] + [shlex.quote(str(item)) for item in value]
        else:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


def strip_checkpoint(source, target):
    """best.pt -> only the weights (float32, contiguous: channels_last is a training-time layout) and
    the config fer.load_run rebuilds the model from. Returns the source checkpoint."""
    checkpoint = fer.load_checkpoint(source, "cpu")
    weights = {name: (tensor.float() if tensor.is_floating_point() else tensor).clone(
        memory_format=torch.contiguous_format) for name, tensor in checkpoint["model"].items()}
    torch.save({"model": weights, "config": dict(checkpoint["config"], data=RELEASED_DATA)}, target)
    return checkpoint


def ensure_evaluated(run_dir, data):
    """The run's eval_test.json, written by evaluate.py first if the run has none."""
    if not (run_dir / "eval_test.json").is_file():
        data = data or fer.DEFAULT_DATA
        if not Path(data).exists():
            raise fer.DataError(f"{run_dir} has no eval_test.json and the data ({data}) is not here to make one: "
                                f"pass --data, or evaluate it where the data is (make evaluate RUN={run_dir})")
        print(f"{run_dir} has no eval_test.json: running evaluate.py first")
        subprocess.run([sys.executable, str(fer.PROJECT_DIR / "evaluate.py"), "--run", str(run_dir), "--data", data],
                       check=True)
    return json.loads((run_dir / "eval_test.json").read_text())


# What may differ between the seeds of one recipe: the seed, and records of where and how each run was made.
NOT_RECIPE = NOT_SETTINGS | {"seed", "name", "amp"}


def choose_by_rule(run_dirs, data):
    """Among the seeds of one recipe, the run with the best PublicTest accuracy (the value its best.pt was
    chosen by), and every seed's (run, PublicTest, PrivateTest accuracy) for the card."""
    seeds = []
    for run_dir in run_dirs:
        checkpoint = fer.load_checkpoint(run_dir / "best.pt", "cpu", keys=("model", "config", "val_acc"))
        seeds.append((run_dir, checkpoint["val_acc"], ensure_evaluated(run_dir, data)["accuracy"], checkpoint["config"]))
    recipe = {key: value for key, value in seeds[0][3].items() if key not in NOT_RECIPE}
    for run_dir, _, _, config in seeds[1:]:
        differ = sorted(key for key in recipe.keys() | config.keys() - NOT_RECIPE if config.get(key) != recipe.get(key))
        if differ:
            raise fer.DataError(f"{run_dir} and {seeds[0][0]} are not seeds of one recipe: they differ in "
                                f"{', '.join(differ)}")
    return max(seeds, key=lambda seed: seed[1])[0], [seed[:3] for seed in seeds]


def model_card(run_dir, config, checkpoint, report, size_mb, parameters, seeds=()):
    accuracy = (f"{report['accuracy']:.2%} (with flip TTA {report['accuracy_flip_tta']:.2%}; "
                f"macro-F1 {report['macro_f1']:.3f})")
    if "accuracy_without_train_duplicates" in report:
        accuracy += (f"; {report['accuracy_without_train_duplicates']:.2%} on the "
                     f"{report['images_without_train_duplicate']} images with no copy in train")
    rows = []
    if len(seeds) > 1:
        private = torch.tensor([accuracy for _, _, accuracy in seeds])
        listed = ", ".join(f"seed {json.loads((run / 'config.json').read_text())['seed']}: {val:.2%} / {test:.2%}"
                           for run, val, test in seeds)
        rows.append(f"| seeds of this command | {len(seeds)}, PrivateTest {private.mean():.2%} ± {private.std():.2%}; "
                    f"released: the best on PublicTest (PublicTest / PrivateTest: {listed}) |")
    if "ferplus_accuracy" in report:
        rows.append(f"| FER+ majority accuracy | {report['ferplus_accuracy']:.2%} on the {report['ferplus_images']} "
                    f"PrivateTest images with a FER+ majority label (the crowd's votes, not the dataset's label); "
                    f"{report['ferplus_clear_accuracy']:.2%} on the {report['ferplus_clear_images']} whose majority "
                    f"holds more than half the votes, the images FERPlus's test accuracy counts |")
    lines = [
        f"# Released model: {run_dir.name}", "",
        "Rebuilt by `release.py` from a run folder; every number below is from its files.", "",
        "| | |", "|---|---|",
        f"| source run | `{run_dir.as_posix()}` |",
        f"| model | {config['arch']}, {parameters:,} parameters |",
        f"| training command | `{training_command(config)}` (from config.json; the settings without a flag "
        f"are built into the code) |",
        f"| git commit | `{config.get('git_commit') or 'unknown'}` |",
        f"| checkpoint | epoch {checkpoint.get('epoch', '?')} of {config['epochs']}, the best validation "
        f"(PublicTest) accuracy ({checkpoint.get('val_acc', float('nan')):.2%}) |",
        f"| PrivateTest accuracy | {accuracy} |",
        *rows,
        f"| size | {size_mb:.1f} MB (best.pt: float32 weights and config only) |",
        f"| released | {time.strftime('%Y-%m-%d')} with `python release.py "
        f"{' '.join('--run ' + run.as_posix() for run, _, _ in seeds) or '--run ' + run_dir.as_posix()}` |", "",
        f"Per class, {report.get('split', 'PrivateTest')} ({report.get('images', '?')} images):", "",
        "| emotion | F1 | precision | recall | images |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {row['f1']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | {row['support']} |"
              for name, row in report["per_class"].items()]
    return "\n".join(lines) + "\n"


def build_release(run_dir, out, data=None, seeds=()):
    """Build the release of `run_dir` in a hidden folder beside `out`, check it, then swap it in."""
    if not (run_dir / "best.pt").is_file():
        raise fer.DataError(f"{run_dir / 'best.pt'}: no checkpoint; expected a run folder written by train_*.py")
    if run_dir.resolve() == out.resolve():
        raise fer.DataError(f"{run_dir} is the release itself; name the run folder it was made from")
    report = ensure_evaluated(run_dir, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}-new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        checkpoint = strip_checkpoint(run_dir / "best.pt", staging / "best.pt")
        for name in COPIED:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, staging / name)
        run_config = json.loads((run_dir / "config.json").read_text())
        (staging / "config.json").write_text(json.dumps(dict(run_config, data=RELEASED_DATA), indent=2) + "\n")
        # The stripped checkpoint must load as a run folder and predict exactly what the source does.
        cpu, faces = torch.device("cpu"), torch.randint(0, 256, (32, fer.IMAGE_SIZE, fer.IMAGE_SIZE), dtype=torch.uint8)
        released, config = fer.load_run(staging, cpu)
        if not torch.equal(fer.predict_probabilities(released, faces, cpu),
                           fer.predict_probabilities(fer.load_run(run_dir, cpu)[0], faces, cpu)):
            raise RuntimeError(f"the stripped checkpoint predicts differently from {run_dir / 'best.pt'}")
        size_mb = sum(f.stat().st_size for f in staging.iterdir()) / 1e6
        card = model_card(run_dir, config, checkpoint, report, size_mb, fer.count_parameters(released), seeds)
        (staging / "RELEASE.md").write_text(card)
        # The swap: two renames, so no reader ever sees a half-written release (between them, for an
        # instant, none at all; an interrupted swap leaves the old one in the hidden -old- folder).
        if out.exists():
            old = out.with_name(f".{out.name}-old-{os.getpid()}")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return card, size_mb


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, action="append",
                        help="run folder written by train_baseline.py or train_transfer.py; repeat it for the "
                        "seeds of one recipe, and the best on PublicTest is released")
    parser.add_argument("--out", type=Path, default=fer.RELEASED_RUN, help="release folder (default: runs/release)")
    parser.add_argument("--data", help="dataset for evaluate.py, if a run is not evaluated yet "
                        "(default: $FER_DATA or data/fer2013)")
    args = parser.parse_args()
    try:
        run_dir, seeds = choose_by_rule(args.run, args.data) if len(args.run) > 1 else (args.run[0], ())
        card, size_mb = build_release(run_dir, args.out, args.data, seeds)
    except (fer.DataError, subprocess.CalledProcessError) as error:
        sys.exit(f"error: {error}")
    print(card)
    print(f"released {run_dir} as {args.out} ({size_mb:.1f} MB)")
    if size_mb > 10:
        print(f"note: {size_mb:.0f} MB is committed with every release; the baseline CNN is 9.8 MB")


if __name__ == "__main__":
    main()
