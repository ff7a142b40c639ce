"""NVIDIA DALI pipelines: training (decode, random resized crop, flip, normalise) and
validation (resize, centre crop, optionally rectangular).

Decoding and augmentation run on DALI's own threads, off the Python interpreter, which is why
DALI and not a PIL DataLoader (see bench/dataloader.py). On a GPU node JPEGs are decoded with
`mixed` (nvJPEG) and the rest runs on the GPU; without one, every operator runs on the CPU.

The training reader gets an explicit file list: this rank's slice of the global sample stream
for the next stretch of steps (see folder.py), read in order, not shuffled by DALI. The
reader's labels are the dataset indices, so each batch says which samples it holds and the
trainer checks that they are the ones the elastic loop planned.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from trainer import elastic

from .config import DataConfig
from .folder import FolderIndex, rank_indices, share_size
from .phases import Phase, PhaseSpan

READER = "reader"


class DaliMissingError(ImportError):
    """NVIDIA DALI is not installed in this environment."""


def _dali() -> tuple:
    """Import DALI lazily: parsing a config or building a model must not need it."""
    try:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator
    except ImportError as exc:
        raise DaliMissingError(
            f"NVIDIA DALI does not import ({exc}); install the trainer with "
            "pip install 'coord[train]' (DALI's CPU operators need no GPU)") from exc
    return fn, pipeline_def, types, DALIGenericIterator


def require_dali() -> None:
    """Fail before joining the process group rather than at the first batch."""
    _dali()


@dataclass(frozen=True)
class Placement:
    """Where the pipeline runs: device_id None means CPU operators only."""

    device_id: int | None
    threads: int
    seed: int

    @property
    def gpu(self) -> bool:
        return self.device_id is not None


def _normalise_args(cfg: DataConfig) -> dict[str, object]:
    return {"mean": [m * 255 for m in cfg.mean], "std": [s * 255 for s in cfg.std],
            "output_layout": "CHW"}


def train_pipeline(files: list[str], labels: list[int], batch: int, size: int,
                   cfg: DataConfig, where: Placement):
    """Read `files` in order; random-resized-crop to size x size, maybe flip, normalise."""
    fn, pipeline_def, types, _ = _dali()

    @pipeline_def(batch_size=batch, num_threads=where.threads, device_id=where.device_id,
                  seed=where.seed, prefetch_queue_depth=2)
    def pipe():
        jpegs, ids = fn.readers.file(files=files, labels=labels, random_shuffle=False,
                                     name=READER)
        images = fn.decoders.image_random_crop(
            jpegs, device="mixed" if where.gpu else "cpu", output_type=types.RGB,
            random_area=[cfg.min_scale, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
            num_attempts=10)
        images = fn.resize(images, resize_x=size, resize_y=size)
        mirror = fn.random.coin_flip(probability=0.5) if cfg.flip else 0
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, mirror=mirror,
                                          **_normalise_args(cfg))
        return images, ids

    return pipe()


class TrainStream:
    """This rank's batches for consecutive steps of one phase, starting at `position`.

    The reader is rebuilt about once per epoch of steps (a file list for a whole phase of
    ImageNet would be millions of strings) and never past the phase end.
    """

    def __init__(self, index: FolderIndex, span: PhaseSpan, cfg: DataConfig,
                 sampler: elastic.GlobalSampler, world_size: int, rank: int,
                 position: int, where: Placement) -> None:
        self.index, self.span, self.cfg = index, span, cfg
        self.sampler, self.world_size, self.rank = sampler, world_size, rank
        self.where = where
        self.batch = share_size(span.phase.global_batch, world_size, rank)
        self.position = position
        self.chunk_steps = max(1, -(-len(index) // span.phase.global_batch))
        self._steps_left_in_chunk = 0
        self._iter: Iterator | None = None

    def _build(self) -> None:
        """A reader over the next chunk of this rank's stream."""
        phase = self.span.phase
        steps = max(1, min(self.chunk_steps, self.span.steps_left(self.position)))
        ids = rank_indices(self.sampler, self.position, phase.global_batch, self.world_size,
                           self.rank, steps)
        files = [self.index.files[i] for i in ids]
        where = Placement(self.where.device_id, self.where.threads,
                          (self.where.seed * 7919 + self.position * 31 + self.rank) % 2**31)
        self._iter = None  # drop the previous pipeline (and its threads) first
        pipe = train_pipeline(files, [int(i) for i in ids], self.batch, phase.size, self.cfg,
                              where)
        _, _, _, iterator = _dali()
        self._iter = iter(iterator(pipe, ["x", "ids"]))
        self._steps_left_in_chunk = steps

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images NCHW float, dataset indices) of the next step's share."""
        if self._steps_left_in_chunk == 0:
            self._build()
        out = next(self._iter)[0]
        self._steps_left_in_chunk -= 1
        self.position += self.span.phase.global_batch
        return out["x"], out["ids"].view(-1).long().cpu()

    def close(self) -> None:
        self._iter = None


# -- validation ----------------------------------------------------------------------------


def image_sizes(files: list[str]) -> list[tuple[int, int]]:
    """(width, height) from each file's header, without decoding it."""
    from PIL import Image

    sizes = []
    for path in files:
        with Image.open(path) as image:
            sizes.append(image.size)
    return sizes


def rect_crops(sizes: list[tuple[int, int]], size: int, resize_shorter: int,
               batch: int) -> list[tuple[int, int]]:
    """(crop_h, crop_w) per batch of files sorted by aspect ratio: the short side is `size`,
    the long side follows the batch's median aspect ratio, clipped to fit every image."""
    crops = []
    for start in range(0, len(sizes), batch):
        chunk = sizes[start:start + batch]
        resized = [(resize_shorter * h / min(w, h), resize_shorter * w / min(w, h))
                   for w, h in chunk]
        ratio = float(np.median([w / h for w, h in chunk]))
        want = (size, round(size * ratio)) if ratio >= 1 else (round(size / ratio), size)
        crops.append((min(want[0], int(min(h for h, _ in resized))),
                      min(want[1], int(min(w for _, w in resized)))))
    return crops


def val_pipeline(files: list[str], labels: list[int], crops: list[tuple[int, int]],
                 batch: int, resize_shorter: int, cfg: DataConfig, where: Placement):
    """Resize the short side, then centre-crop to each batch's (crop_h, crop_w)."""
    fn, pipeline_def, types, _ = _dali()
    per_sample = itertools.cycle(
        ([np.array(h, dtype=np.float32)] * batch, [np.array(w, dtype=np.float32)] * batch)
        for h, w in crops)

    @pipeline_def(batch_size=batch, num_threads=where.threads, device_id=where.device_id,
                  seed=where.seed)
    def pipe():
        jpegs, ids = fn.readers.file(files=files, labels=labels, random_shuffle=False,
                                     name=READER)
        crop_h, crop_w = fn.external_source(source=per_sample, num_outputs=2, batch=True)
        images = fn.decoders.image(jpegs, device="mixed" if where.gpu else "cpu",
                                   output_type=types.RGB)
        images = fn.resize(images, resize_shorter=resize_shorter)
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, crop_h=crop_h,
                                          crop_w=crop_w, out_of_bounds_policy="pad",
                                          **_normalise_args(cfg))
        return images, ids

    return pipe()


def val_batches(index: FolderIndex, shard: range, phase: Phase, cfg: DataConfig,
                where: Placement) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, class labels) for this rank's validation shard, each sample exactly once."""
    count = len(shard)
    if count == 0:
        return
    ids = list(shard)
    size = phase.eval_size
    resize_shorter = round(size / cfg.val_crop_fraction)
    batch = min(cfg.val_batch, count)
    if phase.rect_val:
        sizes = image_sizes([index.files[i] for i in ids])
        order = np.argsort([w / h for w, h in sizes], kind="stable")
        ids, sizes = [ids[i] for i in order], [sizes[i] for i in order]
    pad = -count % batch  # repeat the last file so batches and crops stay aligned
    ids = ids + [ids[-1]] * pad
    crops = (rect_crops(sizes + [sizes[-1]] * pad, size, resize_shorter, batch)
             if phase.rect_val else [(size, size)] * (len(ids) // batch))
    pipe = val_pipeline([index.files[i] for i in ids], ids, crops, batch, resize_shorter,
                        cfg, where)
    _, _, _, iterator = _dali()
    it = iter(iterator(pipe, ["x", "ids"]))
    for b in range(len(ids) // batch):
        out = next(it)[0]
        keep = min(batch, count - b * batch)
        got = out["ids"].view(-1).long().cpu()[:keep]
        yield out["x"][:keep], torch.from_numpy(index.labels[got.numpy()])
