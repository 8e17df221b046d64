"""
Benchmark, side by side in one run on this machine (never compare against an old figure:
shared machines vary by 3x): the data pipeline, a full training step per model and layout,
evaluation, and predict.py on a folder of face crops and on a video. Prints a table and writes
bench.json.

    python bench.py            # about three minutes
    python bench.py --quick    # a few seconds per row

Achieved GFLOP/s uses the FLOPs that torch.utils.flop_counter counts for one forward and
backward pass (convolutions and matrix multiplies; 2 FLOPs per multiply-add), and is shown as
a fraction of this machine's measured 2048x2048 float32 (and bfloat16) matrix multiply.
"""
import argparse
import contextlib
import io
import json
import math
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import fer


def cpu_name():
    """The CPU's model name and family (Linux), e.g. 'AMD EPYC, family 26'."""
    try:
        first_cpu = open("/proc/cpuinfo").read().split("\n\n")[0]
        info = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in first_cpu.splitlines())}
        return f"{info['model name']}, family {info['cpu family']}"
    except (OSError, KeyError):
        return platform.machine()


def images_per_second(step, batch_size, seconds):
    """Run `step` (which processes `batch_size` images) repeatedly for about `seconds`."""
    step(), step()  # warm-up: allocator, oneDNN kernel selection
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        count += batch_size
    return count / (time.perf_counter() - start)


def matmul_gflops(dtype, seconds):
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    return images_per_second(lambda: a @ b, 1, seconds) * 2 * 2048 ** 3 / 1e9


def training_flops(model, batch_size, side=fer.IMAGE_SIZE):
    """FLOPs of one forward + backward pass over a batch of side x side images, as counted by PyTorch."""
    images = torch.rand(batch_size, 1, side, side)
    with FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench_training_step(config, batch_size, seconds):
    """images/s of a full step (augment, forward, backward, AdamW) in the training loop's own code."""
    torch.manual_seed(0)
    model = fer.build_model(config)
    flops_per_image = training_flops(model, 8) / 8
    memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
    model.to(memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if config.get("compile"):
        model = torch.compile(model)  # compiled on the first (warm-up) step, outside the timing
    images = torch.randint(0, 256, (batch_size, 48, 48), dtype=torch.uint8)
    labels = torch.randint(0, len(fer.EMOTIONS), (batch_size,))

    def step():
        inputs = fer.augment_batch(fer.as_model_input(images))
        with fer.autocast(torch.device("cpu"), config["amp"]):
            loss = nn.functional.cross_entropy(model(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rate = images_per_second(step, batch_size, seconds)
    return rate, flops_per_image


def bench_our_data_pipeline(train_images, batch_size, seconds):
    """Index a resident uint8 tensor, convert, augment the whole batch at once."""
    images = train_images
    order = torch.randperm(len(images))
    position = [0]

    def next_batch():
        start = position[0] % (len(images) - batch_size)
        position[0] += batch_size
        fer.augment_batch(fer.as_model_input(images[order[start:start + batch_size]]))

    return images_per_second(next_batch, batch_size, seconds)


def bench_seed_data_pipeline(data_root, batch_size, seconds):
    """The original project's style: ImageFolder + per-image PIL transforms + DataLoader worker processes."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.Grayscale(), transforms.RandomHorizontalFlip(),
        transforms.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)), transforms.ToTensor()])
    dataset = datasets.ImageFolder(f"{data_root}/train", transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=2,
                                         persistent_workers=True)
    def endless():  # a fast machine can get through an epoch within the measurement
        while True:
            yield from loader

    batches = endless()
    return images_per_second(lambda: next(batches), batch_size, seconds)


def write_face_video(path, frames=150):
    """A 640x480, 30 frames/s video of one real face (docs/astronaut.jpg, public domain) drifting and
    zooming over a plain background."""
    import cv2
    import numpy as np
    from PIL import Image

    head = Image.open(fer.PROJECT_DIR / "docs" / "astronaut.jpg").convert("RGB").crop((96, 0, 352, 256))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 480))
    for i in range(frames):
        phase = 2 * math.pi * i / frames
        size = int(220 + 60 * math.sin(phase))
        frame = Image.new("RGB", (640, 480), (90, 110, 130))
        frame.paste(head.resize((size, size)), (int(40 + (560 - size) * (0.5 + 0.5 * math.sin(phase))),
                                                int(20 + (440 - size) * (0.5 + 0.5 * math.cos(phase)))))
        writer.write(cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2BGR))
    writer.release()


def bench_predict(crop_paths, run_dir, workdir):
    """predict.py end to end in this process, as a user runs it (start-up of Python and torch aside):
    a folder of face crops with --no-detect, JSON lines only, decoding included; and a 640x480 video
    with one face, with and without its annotated copy."""
    import predict

    def run(*argv):  # (seconds, the JSON lines printed)
        printed = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
            predict.main(["--run", str(run_dir), *map(str, argv)])
        return time.perf_counter() - start, [json.loads(line) for line in printed.getvalue().splitlines()]

    results = {}
    if crop_paths:  # symbolic links: a folder of the crops, without copying any
        (workdir / "crops").mkdir()
        for path in crop_paths:
            (workdir / "crops" / path.name).symlink_to(path.resolve())
        run("--no-detect", *crop_paths[:8])  # warm-up: oneDNN picks its kernels
        seconds, faces = run("--no-detect", workdir / "crops")
        results["folder_no_detect_images_per_s"] = len(faces) / seconds
        # Beside it, evaluate.py's path on the same crops and model: decoded beforehand, float32, batches of 512.
        model, _ = fer.load_run(run_dir, torch.device("cpu"))
        images = torch.stack([fer.read_image(path) for path in crop_paths])
        start = time.perf_counter()
        fer.predict_probabilities(model, images, torch.device("cpu"))
        results["evaluate_same_crops_images_per_s"] = len(images) / (time.perf_counter() - start)
    try:
        write_face_video(workdir / "face.mp4")
    except ImportError:  # no OpenCV: make install-predict
        return results
    seconds, faces = run(workdir / "face.mp4")
    results["video_frames_per_s"] = 150 / seconds
    faces_per_frame = Counter(face["frame"] for face in faces)
    results["video_frames_with_one_face"] = sum(count == 1 for count in faces_per_frame.values())
    seconds, _ = run("--out", workdir / "annotated", workdir / "face.mp4")
    results["video_with_annotated_copy_frames_per_s"] = 150 / seconds
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=fer.DEFAULT_DATA, help="FER-2013, Kaggle layout (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1 second per measurement instead of 5")
    parser.add_argument("--compile", action="store_true", help="also time the baseline under torch.compile "
                        "(compiling takes a minute or more on 2 cores)")
    parser.add_argument("--out", default="bench.json", help="(default: %(default)s)")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 5.0
    # Where this CPU only emulates bf16 (no AVX-512 BF16 or AMX), training runs in float32 (--amp auto), so
    # the rows below time float32 in its place: the emulated step is 15x slower and nobody would train with it.
    bf16_native = fer.native_bf16(torch.device("cpu"))
    rows, results = [], {"machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                                     "torch": str(torch.__version__), "native_bf16": bf16_native}}
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"bf16 {'native' if bf16_native else 'emulated: models timed in float32 only'}")

    # An emulated bf16 matmul of this size takes about a minute (0.3 GFLOP/s on a Zen 3 EPYC): not timed.
    fp32, bf16 = matmul_gflops(torch.float32, seconds), matmul_gflops(torch.bfloat16, seconds) if bf16_native else None
    results["matmul_gflops"] = {"float32": fp32, "bfloat16": bf16}
    rows.append(("2048x2048 matmul, float32 / bfloat16", f"{fp32:.0f} / {f'{bf16:.0f}' if bf16 else '-'} GFLOP/s",
                 "" if bf16_native else "bf16 emulated: not timed"))

    data = fer.load_fer2013(args.data)
    ours = bench_our_data_pipeline(data["train"]["images"], 128, seconds)
    seed = bench_seed_data_pipeline(args.data, 128, seconds)
    results["data_pipeline_images_per_s"] = {"ours": ours, "seed_style": seed}
    rows.append(("data: ours (resident tensor, batched aug)", f"{ours:,.0f} img/s", f"{ours / seed:.0f}x seed"))
    rows.append(("data: original pipeline (ImageFolder+PIL+2 workers)", f"{seed:,.0f} img/s", ""))

    results["training_step"] = []

    def training_row(label, config, batch_size):
        rate, flops = bench_training_step(config, batch_size, seconds)
        gflops = rate * flops / 1e9
        results["training_step"].append(dict(label=label, batch_size=batch_size, images_per_s=rate,
                                             mflop_per_image=flops / 1e6, gflops=gflops))
        of_bf16 = f" / {gflops / bf16:.0%} of bf16" if bf16_native else ""
        rows.append((f"train step: {label}, batch {batch_size}", f"{rate:,.0f} img/s",
                     f"{gflops:.0f} GFLOP/s = {gflops / fp32:.0%} of fp32{of_bf16} matmul ({flops / 1e6:.0f} MFLOP/img)"))

    # Precisions worth timing here (float32 only where bf16 is emulated), and the one training uses.
    amps = (False, True) if bf16_native else (False,)
    precision = {False: "float32", True: "bf16 autocast"}
    fast = {"channels_last": True, "amp": bf16_native}
    fast_label = f"channels_last, {precision[bf16_native]}"

    baseline = {"arch": "baseline", "width": 32}
    for layout, channels_last in (("NCHW", False), ("channels_last", True)):
        for amp in amps:
            for batch_size in (128, 256):
                training_row(f"baseline, {layout}, {precision[amp]}", dict(baseline, channels_last=channels_last,
                                                                           amp=amp), batch_size)
    # VGGNet (train_baseline.py --arch vggnet) beside the baseline, and a wider one.
    vggnet = {"arch": "vggnet", "width": 32, **fast}
    for label, change in (("", {}), (" width 48", {"width": 48})):
        training_row(f"vggnet{label}, {fast_label}", dict(vggnet, **change), 128)
    if args.compile:
        training_row(f"baseline, {fast_label}, torch.compile", dict(baseline, **fast, compile=True), 128)
    # Transfer models, fine-tuning everything (train_transfer.py's default), at the input size that
    # sets their last feature map: 48px -> 2x2, 96px -> 3x3, 128px -> 4x4 (stride 32).
    for arch, size in (("mobilenet_v2", 48), ("mobilenet_v2", 96), ("mobilenet_v2", 128), ("resnet18", 96),
                       ("vgg16", 96)):
        transfer = {"arch": arch, "input_size": size, "feature_block": None, "unfreeze": "all", **fast}
        training_row(f"{arch} {size}px, {fast_label}", transfer, 64)

    model = fer.build_model(baseline).to(memory_format=torch.channels_last)
    images, labels = data["val"]["images"], data["val"]["labels"]
    for name, tta in (("single view", False), ("flip TTA", True)):
        for amp in amps:
            start = time.perf_counter()
            fer.evaluate(model, images, labels, torch.device("cpu"), amp=amp, tta=tta)
            rate = len(images) / (time.perf_counter() - start)
            results.setdefault("evaluation_images_per_s", {})[f"{name}, {'bf16' if amp else 'fp32'}"] = rate
            rows.append((f"evaluate: baseline, {name}, {'bf16' if amp else 'float32'}", f"{rate:,.0f} img/s", ""))

    # predict.py with the released model, or else an untrained baseline of the default width.
    with tempfile.TemporaryDirectory() as workdir:
        run_dir = fer.RELEASED_RUN if (fer.RELEASED_RUN / "best.pt").is_file() else Path(workdir, "run")
        if run_dir != fer.RELEASED_RUN:
            run_dir.mkdir()
            torch.save({"model": fer.build_model(baseline).state_dict(), "config": baseline}, run_dir / "best.pt")
        arch = torch.load(run_dir / "best.pt", weights_only=True)["config"]["arch"]
        speeds = bench_predict(sorted(Path(args.data).glob("test/*/PrivateTest_*")), run_dir, Path(workdir))
    results["predict"] = dict(speeds, arch=arch)
    if "folder_no_detect_images_per_s" in speeds:
        rows.append((f"predict: folder of PrivateTest crops, --no-detect, {arch}",
                     f"{speeds['folder_no_detect_images_per_s']:,.0f} img/s", "decoding and JSON lines included; "
                     f"evaluate.py's path, same crops: {speeds['evaluate_same_crops_images_per_s']:,.0f} img/s"))
    if "video_frames_per_s" in speeds:
        found = f"one face found in {speeds['video_frames_with_one_face']} of 150 frames"
        rows.append((f"predict: 640x480 video, one face, {arch}", f"{speeds['video_frames_per_s']:.0f} frames/s",
                     found))
        rows.append(("predict: the same, writing the annotated copy",
                     f"{speeds['video_with_annotated_copy_frames_per_s']:.0f} frames/s", ""))

    width = max(len(row[0]) for row in rows)
    for what, value, note in rows:
        print(f"{what:<{width}}  {value:>16}  {note}")
    with open(args.out, "w") as file:
        json.dump(results, file, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
