"""Write small image data sets as JPEGs in ImageFolder layout (`train/<class>/*.jpg`, `val/...`).

Nothing is downloaded: `digits` is scikit-learn's bundled copy of the UCI handwritten digits
(1,797 8x8 greyscale images inside the wheel), upscaled so the trainer's DALI pipelines decode,
crop and resize real JPEGs exactly as they would ImageNet. `synthetic` draws smooth random
colour images from a seed, for data-loader benchmarks where only pixel throughput matters.

    python -m trainer.datasets digits data/digits --size 32
    python -m trainer.datasets synthetic /tmp/jpegs --count 512

A finished directory holds a `.complete` marker with its parameters; writing the same data set
again is a no-op, so a job's `setup` can run it on every start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MARKER = ".complete"
WRITING = ".writing"  # left by a write that did not finish: the directory is still ours


def _is_complete(out: Path, params: dict[str, object]) -> bool:
    marker = out / MARKER
    return marker.exists() and json.loads(marker.read_text()) == params


def _claim(out: Path, params: dict[str, object]) -> bool:
    """True when `out` already holds this data set. A directory we wrote with other parameters
    (or did not finish) is replaced; any other non-empty directory is refused: it may be the
    user's own data."""
    if _is_complete(out, params):
        return True
    if out.is_dir() and any(out.iterdir()):
        if not ((out / MARKER).exists() or (out / WRITING).exists()):
            raise FileExistsError(f"{out} is not empty and was not written by trainer.datasets; "
                                  "refusing to replace it: choose an empty or new directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / WRITING).touch()
    return False


def _mark_complete(out: Path, params: dict[str, object]) -> None:
    (out / MARKER).write_text(json.dumps(params))
    (out / WRITING).unlink()


def _save_jpeg(pixels: np.ndarray, path: Path, quality: int = 92) -> None:
    """uint8 HxW (greyscale) or HxWx3 array -> JPEG file."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)


def digits_split(count: int, val_every: int = 5) -> list[str]:
    """'val' for every `val_every`-th sample, 'train' otherwise: stratified enough (the
    scikit-learn copy cycles through writers and classes) and stable across machines."""
    return ["val" if i % val_every == 0 else "train" for i in range(count)]


def _upscale(image: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit (0..16) to a size x size uint8 image with smooth (bicubic) edges."""
    from PIL import Image

    small = Image.fromarray((image * (255.0 / 16.0)).clip(0, 255).astype(np.uint8))
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))


def write_digits(out: Path, size: int = 32) -> Path:
    """scikit-learn's digits as `out/{train,val}/<digit>/<index>.jpg`; returns `out`."""
    from sklearn.datasets import load_digits

    params: dict[str, object] = {"dataset": "digits", "size": size}
    if _claim(out, params):
        return out
    digits = load_digits()
    splits = digits_split(len(digits.images))
    for i, (image, label, split) in enumerate(zip(digits.images, digits.target, splits)):
        _save_jpeg(_upscale(image, size), out / split / str(int(label)) / f"{i:05d}.jpg")
    _mark_complete(out, params)
    return out


def _smooth_images(count: int, height: int, width: int, seed: int) -> Iterator[np.ndarray]:
    """Random colour images with large-scale structure (upsampled noise), so the JPEGs
    compress and decode like photographs rather than like white noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 12, size=(height, width, 3))
        yield (np.asarray(image, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8)


def write_synthetic(out: Path, count: int = 512, height: int = 160, width: int = 200,
                    classes: int = 4, seed: int = 0) -> Path:
    """`count` generated JPEGs as `out/train/<class>/*.jpg` (class = index % classes)."""
    params: dict[str, object] = {"dataset": "synthetic", "count": count, "height": height,
                                 "width": width, "classes": classes, "seed": seed}
    if _claim(out, params):
        return out
    for i, pixels in enumerate(_smooth_images(count, height, width, seed)):
        _save_jpeg(pixels, out / "train" / f"c{i % classes}" / f"{i:06d}.jpg")
    _mark_complete(out, params)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="dataset", required=True)
    d = sub.add_parser("digits", help="scikit-learn's bundled handwritten digits")
    d.add_argument("out", type=Path)
    d.add_argument("--size", type=int, default=32, help="side of the written JPEGs")
    s = sub.add_parser("synthetic", help="generated colour JPEGs (benchmarks)")
    s.add_argument("out", type=Path)
    s.add_argument("--count", type=int, default=512)
    s.add_argument("--height", type=int, default=160)
    s.add_argument("--width", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.dataset == "digits":
            out = write_digits(args.out, args.size)
        else:
            out = write_synthetic(args.out, args.count, args.height, args.width, seed=args.seed)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # scikit-learn, pillow: the trainer's extra
        print(f"error: {exc}: install the trainer with pip install 'coord[train]' "
              "(from a clone: bash scripts/setup.sh)", file=sys.stderr)
        return 2
    print(f"wrote {args.dataset} to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
