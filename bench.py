"""
Benchmark, side by side in one run on this machine (never compare against an old figure:
shared machines vary by 3x): the data pipeline, a full training step per model and layout,
and evaluation. Prints a table and writes bench.json.

    python bench.py            # about two minutes
    python bench.py --quick    # a few seconds per row

Achieved GFLOP/s uses the FLOPs that torch.utils.flop_counter counts for one forward and
backward pass (convolutions and matrix multiplies; 2 FLOPs per multiply-add), and is shown as
a fraction of this machine's measured 2048x2048 float32 (and bfloat16) matrix multiply.
"""
import argparse
import json
import platform
import time

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


def training_flops(model, batch_size):
    """FLOPs of one forward + backward pass over a batch, as counted by PyTorch."""
    images = torch.rand(batch_size, 1, fer.IMAGE_SIZE, fer.IMAGE_SIZE)
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
    """The seed's style: ImageFolder + per-image PIL transforms + DataLoader worker processes."""
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=fer.DEFAULT_DATA, help="FER-2013, Kaggle layout (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1 second per measurement instead of 5")
    parser.add_argument("--compile", action="store_true", help="also time the baseline under torch.compile "
                        "(compiling takes a minute or more on 2 cores)")
    parser.add_argument("--out", default="bench.json", help="(default: %(default)s)")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 5.0
    rows, results = [], {"machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                                     "torch": str(torch.__version__)}}
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    fp32, bf16 = matmul_gflops(torch.float32, seconds), matmul_gflops(torch.bfloat16, seconds)
    results["matmul_gflops"] = {"float32": fp32, "bfloat16": bf16}
    rows.append(("2048x2048 matmul, float32 / bfloat16", f"{fp32:.0f} / {bf16:.0f} GFLOP/s", ""))

    data = fer.load_fer2013(args.data)
    ours = bench_our_data_pipeline(data["train"]["images"], 128, seconds)
    seed = bench_seed_data_pipeline(args.data, 128, seconds)
    results["data_pipeline_images_per_s"] = {"ours": ours, "seed_style": seed}
    rows.append(("data: ours (resident tensor, batched aug)", f"{ours:,.0f} img/s", f"{ours / seed:.0f}x seed"))
    rows.append(("data: seed style (ImageFolder+PIL+2 workers)", f"{seed:,.0f} img/s", ""))

    results["training_step"] = []

    def training_row(label, config, batch_size):
        rate, flops = bench_training_step(config, batch_size, seconds)
        gflops = rate * flops / 1e9
        results["training_step"].append(dict(label=label, batch_size=batch_size, images_per_s=rate,
                                             mflop_per_image=flops / 1e6, gflops=gflops))
        rows.append((f"train step: {label}, batch {batch_size}", f"{rate:,.0f} img/s",
                     f"{gflops:.0f} GFLOP/s = {gflops / fp32:.0%} of fp32 / {gflops / bf16:.0%} of bf16 matmul "
                     f"({flops / 1e6:.0f} MFLOP/img)"))

    baseline = {"arch": "baseline", "width": 32, "batch_norm": False}
    for layout, channels_last in (("NCHW", False), ("channels_last", True)):
        for precision, amp in (("float32", False), ("bf16 autocast", True)):
            for batch_size in (128, 256):
                training_row(f"baseline, {layout}, {precision}", dict(baseline, channels_last=channels_last, amp=amp),
                             batch_size)
    if args.compile:
        training_row("baseline, channels_last, bf16 autocast, torch.compile",
                     dict(baseline, channels_last=True, amp=True, compile=True), 128)
    # Transfer models, fine-tuning everything (train_transfer.py's default), at the input size that
    # sets their last feature map: 48px -> 2x2, 96px -> 3x3, 128px -> 4x4 (stride 32).
    for arch, size in (("mobilenet_v2", 48), ("mobilenet_v2", 96), ("mobilenet_v2", 128), ("resnet18", 96),
                       ("vgg16", 96)):
        transfer = {"arch": arch, "input_size": size, "unfreeze": "all", "channels_last": True, "amp": True}
        training_row(f"{arch} {size}px, channels_last, bf16 autocast", transfer, 64)

    model = fer.build_model(baseline).to(memory_format=torch.channels_last)
    images, labels = data["val"]["images"], data["val"]["labels"]
    for name, tta in (("single view", False), ("flip TTA", True)):
        for amp in (False, True):
            start = time.perf_counter()
            fer.evaluate(model, images, labels, torch.device("cpu"), amp=amp, tta=tta)
            rate = len(images) / (time.perf_counter() - start)
            results.setdefault("evaluation_images_per_s", {})[f"{name}, {'bf16' if amp else 'fp32'}"] = rate
            rows.append((f"evaluate: baseline, {name}, {'bf16' if amp else 'float32'}", f"{rate:,.0f} img/s", ""))

    width = max(len(row[0]) for row in rows)
    for what, value, note in rows:
        print(f"{what:<{width}}  {value:>16}  {note}")
    with open(args.out, "w") as file:
        json.dump(results, file, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
