"""Data-loading throughput: the trainer's DALI CPU pipeline against PIL + DataLoader.

Both decode the same generated JPEGs (trainer.datasets synthetic, 200x160 by default) and do
the same training transforms: random resized crop (area 0.35-1, aspect 3/4-4/3) to SIZE,
random horizontal flip, normalise to float32 CHW. DALI uses N threads; the PIL pipeline uses
a torch DataLoader with N worker processes. Each is timed after a warm-up pass, in alternating
rounds (the best round counts, so load from other processes hurts neither side more). Prints
images/s of each and the ratio.

    .venv/bin/python bench/dataloader.py                  # 2 threads / 2 workers
    .venv/bin/python bench/dataloader.py --workers 4 --size 224 --count 1024
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.datasets import write_synthetic
from trainer.recipe.config import DataConfig
from trainer.recipe.data import Placement, train_pipeline
from trainer.recipe.folder import FolderIndex

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


def crop_box(width: int, height: int, scale: tuple[float, float],
             ratio: tuple[float, float], rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop parameters (10 tries, then the centre), as a PIL box."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            return x, y, x + w, y + h
    side = min(width, height)
    x, y = (width - side) // 2, (height - side) // 2
    return x, y, x + side, y + side


class PilTrainSet(Dataset):
    """Decode with PIL, random resized crop, flip, normalise: the DALI pipeline's steps."""

    def __init__(self, files: list[str], size: int, min_scale: float) -> None:
        self.files, self.size, self.min_scale = files, size, min_scale

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        rng = random.Random()
        with Image.open(self.files[i]) as image:
            image = image.convert("RGB")
            box = crop_box(*image.size, (self.min_scale, 1.0), (3 / 4, 4 / 3), rng)
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            pixels = (np.asarray(image, dtype=np.float32) - MEAN) / STD
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def bench_pil(files: list[str], args: argparse.Namespace) -> float:
    """images/s of a DataLoader with `workers` processes, after one warm-up pass."""
    loader = DataLoader(PilTrainSet(files, args.size, 0.35), batch_size=args.batch,
                        shuffle=True, num_workers=args.workers, persistent_workers=True,
                        drop_last=True)
    for _ in loader:  # warm-up: start the workers, fill the page cache
        pass
    count, started = 0, time.perf_counter()
    for _ in range(args.passes):
        for batch in loader:
            count += batch.shape[0]
    return count / (time.perf_counter() - started)


def bench_dali(files: list[str], args: argparse.Namespace) -> float:
    """images/s of the trainer's own DALI training pipeline on CPU, `workers` threads."""
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    cfg = DataConfig(threads=args.workers, min_scale=0.35, flip=True)
    pipe = train_pipeline(files, list(range(len(files))), args.batch, args.size, cfg,
                          Placement(None, args.workers, 0))
    it = iter(DALIGenericIterator(pipe, ["x", "ids"]))
    steps = len(files) // args.batch
    for _ in range(steps):  # warm-up pass
        next(it)
    count, started = 0, time.perf_counter()
    for _ in range(args.passes * steps):
        count += next(it)[0]["x"].shape[0]
    return count / (time.perf_counter() - started)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="DALI threads = DataLoader workers")
    p.add_argument("--count", type=int, default=512, help="generated JPEGs")
    p.add_argument("--size", type=int, default=128, help="output crop side")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--passes", type=int, default=3, help="timed passes over the images")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; best is kept")
    p.add_argument("--data", type=Path, help="where to write the JPEGs (default: a temp dir)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="coord-bench-") as tmp:
        root = write_synthetic(args.data or Path(tmp) / "jpegs", count=args.count)
        files = list(FolderIndex.scan(root / "train").files)
        dali, pil = 0.0, 0.0
        for _ in range(args.rounds):  # alternate, keep the best: load from others evens out
            dali = max(dali, bench_dali(files, args))
            pil = max(pil, bench_pil(files, args))
    print(f"images: {len(files)} JPEGs 200x160 -> {args.size}px, batch {args.batch}, "
          f"{args.workers} threads/workers, best of {args.rounds} rounds of "
          f"{args.passes} timed passes")
    print(f"DALI CPU pipeline      : {dali:8.0f} images/s")
    print(f"PIL + DataLoader       : {pil:8.0f} images/s")
    print(f"ratio DALI / PIL       : {dali / pil:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
