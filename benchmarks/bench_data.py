"""What skipping-and-counting unreadable images costs: ``vithub train``'s ``ReadableSamples`` (opens each image
itself, so a bad file is reported instead of replaced) against timm's ``ImageDataset`` on the same JPEG folder and
eval transform, read side by side (round-robin, median of repeats). Prints a table and writes JSON.

    python benchmarks/bench_data.py [--images 256] [--size 256] [--repeats 5] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from timm.data import create_dataset, create_transform

from vithub.train.data import ReadableSamples


def _make_folder(root: Path, images: int, size: int) -> Path:
    generator = torch.Generator().manual_seed(0)
    for index in range(images):
        folder = root / f"class{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator).numpy()
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)
    return root


def _read_all(dataset) -> float:
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="benchmarks/results/data_readable_samples_cpu.json")
    args = parser.parse_args()
    transform = create_transform(input_size=(3, 224, 224), is_training=False, interpolation="bicubic",
                                 crop_pct=0.875, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with tempfile.TemporaryDirectory() as tmp:
        root = _make_folder(Path(tmp), args.images, args.size)
        timm_dataset = create_dataset("", root=str(root), transform=transform)
        ours = ReadableSamples(create_dataset("", root=str(root)), transform)
        for index in (0, len(ours) - 1):  # same tensors, or the comparison means nothing
            torch.testing.assert_close(ours[index][0], timm_dataset[index][0], rtol=0, atol=0)
        times = {"timm ImageDataset": [], "ReadableSamples": []}
        for _ in range(args.repeats):
            times["timm ImageDataset"].append(_read_all(timm_dataset))
            times["ReadableSamples"].append(_read_all(ours))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["ReadableSamples"] / medians["timm ImageDataset"]
    print(f"{args.images} JPEGs {args.size}x{args.size}, eval transform to 224, 1 process, median of {args.repeats}")
    print(f"{'reader':<20}{'seconds':>10}{'images/s':>12}")
    for name, seconds in medians.items():
        print(f"{name:<20}{seconds:>10.3f}{args.images / seconds:>12.1f}")
    print(f"ReadableSamples / timm time: {ratio:.3f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"images": args.images, "size": args.size, "repeats": args.repeats,
                                                 "seconds": times, "median_seconds": medians,
                                                 "time_ratio_ours_over_timm": ratio,
                                                 "torch_threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
