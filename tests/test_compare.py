"""compare.py's transfer curve, from run folders written here (no training needed to draw it)."""
import json

from conftest import run_script


def write_run(folder, accuracy, minutes, **config):
    folder.mkdir(parents=True)
    config = dict(dict(name=folder.name, schedule="cosine", optimizer="adamw", seed=0, train_fraction=1.0), **config)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "eval_test.json").write_text(json.dumps({
        "accuracy": accuracy, "accuracy_flip_tta": accuracy + 0.01, "accuracy_without_train_duplicates": accuracy,
        "macro_f1": accuracy - 0.1}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": epoch, "val_acc": accuracy, "images_per_s": 100.0, "elapsed_s": 60 * minutes * epoch / 2}) + "\n"
        for epoch in (1, 2)))
    return folder


def test_the_curve_has_one_row_per_point_ordered_by_data_share_then_k(tmp_path):
    transfer = dict(arch="mobilenet_v2", input_size=96, feature_block=None, weights="file", weights_path="w.pth",
                    mode="finetune")
    runs = [write_run(tmp_path / "k19", 0.66, 50, unfreeze="all", **transfer),
            write_run(tmp_path / "k0", 0.47, 10, unfreeze="0", **transfer),
            write_run(tmp_path / "k2-10pct", 0.40, 3, unfreeze="2", train_fraction=0.1, **transfer),
            write_run(tmp_path / "baseline-10pct", 0.45, 1, arch="baseline", width=32,
                      train_fraction=0.1)]
    result = run_script("compare.py", "--curve", "--runs", *map(str, runs), "--out", str(tmp_path / "out"),
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "out" / "curve.md").read_text().splitlines()[2:]
    assert [row.split(" | ")[1] for row in rows] == ["0", "19", "baseline from scratch", "2"]
    assert rows[0].startswith("| 100% | 0 | 8,967 | 47.00% |") and "| 2,232,263 | 66.00% |" in rows[1]
    assert rows[2].startswith("| 10% |") and "50.0 min" in rows[1]
    assert (tmp_path / "out" / "curve.png").stat().st_size > 10_000
