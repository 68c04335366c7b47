"""Kohya-compatible image + caption datasets: repeat folders, caption processing, aspect-ratio buckets.

Layout (kohya-ss "DreamBooth" style): a root folder holds subfolders named `{repeats}_{name}`, each
holding images and, beside each image, a caption file of the same stem (`000001.png` + `000001.txt`).
Rules followed from kohya-ss/sd-scripts, so datasets prepared for it train here unchanged:

- a subfolder whose name does not start with an integer, or whose repeats are < 1, is skipped with a
  warning ("ignore directory without repeats");
- every image of an `N_name` folder is seen N times per epoch;
- the caption is the first line of the caption file, stripped; without a caption file, the folder's
  name after the repeats (`name`, kohya's "class tokens") is used;
- caption dropout is decided first (empty caption, for classifier-free guidance), then the
  comma-separated tags are shuffled with the first `keep_tokens` tags kept in place, rejoined by ", ";
- buckets: `make_bucket_resolutions` is kohya's generator; each image goes to the bucket whose w/h ratio
  is nearest its own (kohya's linear |w/h - bucket w/h|), is scaled to cover it and centre-cropped;
  batches are drawn inside one bucket, and the list of batches is shuffled.

Why our own and not a torch `Sampler` stack: resume must reproduce the epoch exactly. Everything random
here is a pure function of (seed, epoch, sample), not of a stream that would have to be replayed: the
epoch's batch plan comes from `numpy.random.default_rng([seed, epoch])` and each sample's flip / dropout /
shuffle from `default_rng([seed, epoch, item, repeat])`. The dataset position is then just
`(epoch, batch index)`, and any batch can be rebuilt alone (also in DataLoader workers).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

Resolution = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class ImageItem:
    """One training image: its caption text (already read) and how often an epoch repeats it."""

    path: Path
    caption: str
    repeats: int
    size: Resolution


def parse_repeats(folder_name: str) -> tuple[int, str] | None:
    """`"10_red circle"` -> `(10, "red circle")`; None for a folder kohya ignores (no or < 1 repeats)."""
    head, _, rest = folder_name.partition("_")
    try:
        repeats = int(head)
    except ValueError:
        return None
    return (repeats, rest) if repeats >= 1 else None


def _read_caption(image: Path, extension: str) -> str | None:
    path = image.with_suffix(extension)
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0].strip() if lines else ""


def scan_kohya_folder(root: str | Path, caption_extension: str = ".txt") -> list[ImageItem]:
    """Every image under `root`'s `N_name` subfolders, sorted by path (stable across file systems)."""
    if not caption_extension.startswith("."):
        caption_extension = "." + caption_extension
    items: list[ImageItem] = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        parsed = parse_repeats(folder.name)
        if parsed is None:
            logger.warning("ignore directory without repeats: %s", folder)
            continue
        repeats, class_tokens = parsed
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for image in images:
            caption = _read_caption(image, caption_extension)
            if caption is None:
                if not class_tokens:
                    logger.warning("no caption file and no folder caption, using empty caption: %s", image)
                caption = class_tokens
            with Image.open(image) as opened:
                size = opened.size
            items.append(ImageItem(image, caption, repeats, size))
    if not items:
        raise ValueError(f"no training images in {root} (expected subfolders named like '10_name')")
    return items


def make_bucket_resolutions(
    max_resolution: Resolution, min_size: int = 256, max_size: int = 1024, step: int = 64
) -> list[Resolution]:
    """kohya's bucket set: the square of area ≤ max area, then for each width from `min_size` to
    `max_size` in `step`s the tallest multiple-of-`step` height that keeps the area, both ways round."""
    max_area = max_resolution[0] * max_resolution[1]
    side = int(math.sqrt(max_area) // step) * step
    resolutions = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // step) * step)
        if height >= min_size:
            resolutions.add((width, height))
            resolutions.add((height, width))
        width += step
    return sorted(resolutions)


def nearest_bucket(size: Resolution, buckets: Sequence[Resolution]) -> Resolution:
    """The bucket whose aspect ratio is nearest the image's (kohya: |w/h - bw/bh|; an exact size wins)."""
    if size in buckets:
        return size
    ratio = size[0] / size[1]
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))


def resize_and_crop(image: Image.Image, bucket: Resolution) -> Image.Image:
    """Scale so the image covers the bucket (aspect kept), then centre-crop the overflow (kohya's way)."""
    width, height = image.size
    wider = width / height > bucket[0] / bucket[1]  # then match heights and crop the sides
    scale = bucket[1] / height if wider else bucket[0] / width
    resized = (max(bucket[0], int(width * scale + 0.5)), max(bucket[1], int(height * scale + 0.5)))
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.LANCZOS)
    left = (resized[0] - bucket[0]) // 2
    top = (resized[1] - bucket[1]) // 2
    return image.crop((left, top, left + bucket[0], top + bucket[1]))


def to_tensor(image: Image.Image) -> Tensor:
    """An RGB image as a (3, H, W) float tensor in [-1, 1], the range SD's VAE is trained on."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class CaptionOptions:
    """kohya's caption options. `separator` splits tags (kohya's `caption_separator`)."""

    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    separator: str = ","


def process_caption(caption: str, options: CaptionOptions, rng: np.random.Generator) -> str:
    """Dropout first (empty caption, for CFG), then shuffle the tags after the first `keep_tokens`."""
    if options.caption_dropout_rate > 0 and rng.random() < options.caption_dropout_rate:
        return ""
    if not options.shuffle_caption:
        return caption
    tags = [tag.strip() for tag in caption.split(options.separator)]
    fixed, flexible = tags[: options.keep_tokens], tags[options.keep_tokens :]
    order = rng.permutation(len(flexible))
    return ", ".join(fixed + [flexible[i] for i in order])


@dataclass(frozen=True)
class DatasetConfig:
    """Batching and augmentation. `buckets=None` makes kohya's buckets from the other bucket fields; a
    single `[(w, h)]` disables bucketing. Flip is off by default: it swaps "left" and "right"."""

    resolution: Resolution = (512, 512)
    batch_size: int = 1
    buckets: tuple[Resolution, ...] | None = None
    min_bucket_size: int = 256
    max_bucket_size: int = 1024
    bucket_step: int = 64
    captions: CaptionOptions = CaptionOptions()
    flip: bool = False
    seed: int = 0


@dataclass(frozen=True)
class DatasetPosition:
    """Where an epoch stands: the next batch to take. Saved in checkpoints for resume."""

    epoch: int = 0
    batch: int = 0


class KohyaDataset:
    """Bucketed, seeded batches over kohya folders. `batch(epoch, i)` is a pure function."""

    def __init__(self, items: Sequence[ImageItem], config: DatasetConfig) -> None:
        if not items:
            raise ValueError("a dataset needs at least one image")
        self.items = list(items)
        self.config = config
        self.buckets = list(
            config.buckets
            or make_bucket_resolutions(
                config.resolution, config.min_bucket_size, config.max_bucket_size, config.bucket_step
            )
        )
        self.item_buckets = [nearest_bucket(item.size, self.buckets) for item in self.items]

    @classmethod
    def from_folder(
        cls, root: str | Path, config: DatasetConfig, caption_extension: str = ".txt"
    ) -> KohyaDataset:
        """Scan a kohya root folder (see `scan_kohya_folder`)."""
        return cls(scan_kohya_folder(root, caption_extension), config)

    def epoch_plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The epoch's batches as lists of (item index, repeat index); each batch within one bucket.

        As kohya: each bucket's samples (repeats included) are shuffled and cut into batches (the last
        one may be short), then all batches are shuffled together.
        """
        rng = np.random.default_rng([self.config.seed, epoch])
        by_bucket: dict[Resolution, list[tuple[int, int]]] = {}
        for index, (item, bucket) in enumerate(zip(self.items, self.item_buckets, strict=True)):
            by_bucket.setdefault(bucket, []).extend((index, r) for r in range(item.repeats))
        batches: list[list[tuple[int, int]]] = []
        size = self.config.batch_size
        for bucket in sorted(by_bucket):
            samples = by_bucket[bucket]
            order = rng.permutation(len(samples))
            shuffled = [samples[i] for i in order]
            batches.extend(shuffled[i : i + size] for i in range(0, len(shuffled), size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def load_sample(self, epoch: int, index: int, repeat: int) -> tuple[Tensor, str]:
        """One sample's pixels and caption; its randomness is keyed by (seed, epoch, item, repeat)."""
        rng = np.random.default_rng([self.config.seed, epoch, index, repeat])
        item = self.items[index]
        caption = process_caption(item.caption, self.config.captions, rng)
        with Image.open(item.path) as opened:
            image = resize_and_crop(opened.convert("RGB"), self.item_buckets[index])
        if self.config.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(image), caption

    def load_batch(self, epoch: int, samples: Sequence[tuple[int, int]]) -> dict[str, object]:
        """A batch dict: `pixel_values` (B, 3, H, W) in [-1, 1], `captions` (list of str) and
        `item_indices` (B,), which image each sample is (for caches keyed by image, e.g. latents)."""
        loaded = [self.load_sample(epoch, index, repeat) for index, repeat in samples]
        return {
            "pixel_values": torch.stack([pixels for pixels, _ in loaded]),
            "captions": [caption for _, caption in loaded],
            "item_indices": torch.tensor([index for index, _ in samples], dtype=torch.int64),
        }


class EpochBatches(torch.utils.data.Dataset):
    """One epoch's batches, from `start` on, for this process, as a map-style torch dataset.

    A `DataLoader(EpochBatches(...), batch_size=None, num_workers=n)` loads them in parallel; since a
    batch is a pure function of its key, the order of loading cannot change what is loaded.
    With several processes, process p takes batches p, p + n, ... and the epoch is cut to a multiple of n
    so all processes step together.
    """

    def __init__(
        self,
        dataset: KohyaDataset,
        epoch: int,
        start: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
    ) -> None:
        plan = dataset.epoch_plan(epoch)
        per_process = len(plan) // num_processes
        if per_process == 0:
            raise ValueError(f"{len(plan)} batches per epoch cannot feed {num_processes} processes")
        mine = plan[process_index::num_processes][:per_process]
        self.dataset = dataset
        self.epoch = epoch
        self.batches = mine[start:]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, object]:
        return self.dataset.load_batch(self.epoch, self.batches[i])


def batches_per_epoch(dataset: KohyaDataset, num_processes: int = 1) -> int:
    """Batches each process takes per epoch."""
    return len(dataset.epoch_plan(0)) // num_processes
