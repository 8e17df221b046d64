"""
Export a run's model to ONNX, then check the exported file against PyTorch with onnxruntime.

    python export.py                                  # the released model: runs/release/model.onnx
    python export.py --run runs/DIR                   # any run folder: runs/DIR/model.onnx
    python export.py --run runs/DIR face.jpg me.png   # check on these face crops instead of PrivateTest
    python export.py --out onnx/model.onnx            # elsewhere (missing folders are created)

The .onnx file takes float images [batch, 1, 48, 48], gray pixels scaled to [0, 1] (uint8 / 255, as
fer.as_model_input makes them; any batch size), and returns the 7 class **probabilities** [batch, 7]
in fer.EMOTIONS order: the softmax is part of the graph, so a consumer gets what predict.py reports.

The check runs the same images through PyTorch (fer.predict_probabilities, float32) and onnxruntime,
once as one batch and once an image at a time, prints the largest absolute difference, and exits with
status 1 if it exceeds --tolerance. The check images: the face crops named on the command line, else
PrivateTest images of --data, else of $FER_DATA, else of data/fer2013 (the path in a run's config records
where it was trained, on whatever machine that was). Without the dataset, and none named with --data,
the check runs on random noise, with a warning: that checks the arithmetic, not faces. Needs onnx,
onnxscript and onnxruntime, which are not in requirements.txt: `make install-export`.
"""
import argparse
import importlib
import sys
from pathlib import Path

import torch

import fer
import predict

# torch.onnx.export's default exporter (since PyTorch 2.9) captures the graph with torch.export and
# translates it with onnxscript; onnxruntime runs the result. The older TorchScript exporter
# (dynamo=False) needs neither onnx nor onnxscript and exports these models too, but it is deprecated.
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def require_export_packages():
    """Import the optional packages up front: a missing one is one line naming the fix, not a traceback."""
    missing = []
    for name in EXPORT_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        sys.exit(f"error: export.py needs {', '.join(missing)}, not installed: run `make install-export` "
                 f"(pip install -r requirements-export.txt)")


def export(model, path):
    """Write `model` followed by a softmax to `path`, with the batch size left free."""
    model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()  # eval: no dropout in the graph
    # The example batch is 2, not 1: torch.export would take a size-1 dimension for a constant.
    example = torch.rand(2, 1, fer.IMAGE_SIZE, fer.IMAGE_SIZE)
    torch.onnx.export(model, (example,), path, input_names=["images"], output_names=["probabilities"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                      external_data=False, verbose=False)  # one self-contained file (it is far below 2 GB)


def check_images(args, config):
    """(uint8 images [N, 48, 48], what they are): the images to compare PyTorch and ONNX on."""
    if args.images:
        faces = [fer.prepare_face(predict.open_image(Path(path))) for path in args.images]  # read as predict.py reads
        return torch.stack(faces), f"{len(args.images)} image(s) named"
    data_path = args.data or fer.DEFAULT_DATA
    if args.data is None and not Path(data_path).exists():  # a dataset named with --data must be there
        print(f"warning: no dataset at {data_path} (set --data or FER_DATA) and no face crops named: checking "
              f"on {args.count} random-noise images, which checks the arithmetic, not faces", file=sys.stderr)
        noise = torch.randint(0, 256, (args.count, fer.IMAGE_SIZE, fer.IMAGE_SIZE), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0))
        return noise, f"{args.count} random-noise images"
    test = fer.load_fer2013(data_path, seed=config["seed"])["test"]["images"]
    # Evenly spaced over the split: its images are grouped by class, so every emotion is in the sample.
    test = test[torch.linspace(0, len(test) - 1, min(args.count, len(test))).long()]
    return test, f"{len(test)} PrivateTest images of {data_path}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="face crops to check on (default: the run's PrivateTest images)")
    parser.add_argument("--run", type=Path, default=fer.RELEASED_RUN,
                        help="run folder written by train_*.py (default: the released model, runs/release)")
    parser.add_argument("--out", type=Path, help="the .onnx file to write, its folder created if missing "
                        "(default: RUN/model.onnx)")
    parser.add_argument("--data", help="dataset for the check (default: $FER_DATA, else data/fer2013; "
                        "if that is not there, random noise, with a warning)")
    parser.add_argument("--count", type=int, default=512, help="PrivateTest images to check on (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed difference between the probabilities (default: %(default)s)")
    args = parser.parse_args()
    require_export_packages()
    import onnxruntime

    out = args.out or args.run / "model.onnx"
    try:
        model, config = fer.load_run(args.run, torch.device("cpu"))
        images, description = check_images(args, config)
        out.parent.mkdir(parents=True, exist_ok=True)
        export(model.eval(), out)
    except (fer.DataError, OSError) as error:  # OSError: --out names a folder, or a place that cannot be written
        sys.exit(f"error: {error}")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {config['arch']} from {args.run}; input 'images' "
          f"float [batch, 1, 48, 48] in [0, 1], output 'probabilities' [batch, 7] ({', '.join(fer.EMOTIONS)})")

    # The reference is the function evaluate.py and predict.py use, in float32.
    expected = fer.predict_probabilities(model, images, torch.device("cpu"))
    runtime = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inputs = fer.as_model_input(images).numpy()
    as_batch = torch.from_numpy(runtime.run(None, {"images": inputs})[0])
    one_by_one = torch.cat([torch.from_numpy(runtime.run(None, {"images": inputs[i:i + 1]})[0])
                            for i in range(len(inputs))])
    difference = max((as_batch - expected).abs().max().item(), (one_by_one - expected).abs().max().item())
    agree = (as_batch.argmax(1) == expected.argmax(1)).sum().item()
    print(f"check on {description}: batch {len(images)} and batch 1")
    print(f"largest absolute difference in probability, onnxruntime vs PyTorch: {difference:.2e} "
          f"(tolerance {args.tolerance:.0e}); same predicted emotion for {agree}/{len(images)} images")
    if not difference <= args.tolerance:  # `not <=` also fails a NaN
        sys.exit(f"error: {out} differs from the PyTorch model by {difference:.2e} > {args.tolerance:.0e}")


if __name__ == "__main__":
    main()
