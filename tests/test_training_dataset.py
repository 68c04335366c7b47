"""Kohya-compatible datasets: repeat folders, captions, caption processing, buckets, determinism."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.training.dataset import (
    CaptionOptions,
    DatasetConfig,
    EpochBatches,
    KohyaDataset,
    make_bucket_resolutions,
    nearest_bucket,
    parse_repeats,
    process_caption,
    resize_and_crop,
    scan_kohya_folder,
    to_tensor,
)


def _image(path: Path, size: tuple[int, int], rgb: tuple[int, int, int] = (200, 40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


@pytest.fixture
def kohya_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _image(root / "3_red circle" / "000001.png", (64, 64))
    (root / "3_red circle" / "000001.txt").write_text("a red circle, centered\nsecond line ignored\n")
    _image(root / "3_red circle" / "000002.png", (64, 64))
    (root / "3_red circle" / "000002.caption").write_text("from the caption extension")
    _image(root / "1_blue_square" / "000001.png", (64, 32))  # no caption: folder name is the caption
    _image(root / "misc" / "000001.png", (64, 64))  # no repeats: kohya ignores it
    _image(root / "0_zero" / "000001.png", (64, 64))  # zero repeats: ignored too
    (root / "notes.txt").write_text("a file at the root is not a folder")
    return root


def test_parse_repeats_follows_kohya() -> None:
    assert parse_repeats("10_red circle") == (10, "red circle")
    assert parse_repeats("2_a_b") == (2, "a_b")
    assert parse_repeats("5") == (5, "")
    assert parse_repeats("misc") is None
    assert parse_repeats("0_none") is None


def test_scan_reads_repeats_captions_and_skips_like_kohya(
    kohya_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        items = scan_kohya_folder(kohya_root)
    found = {(item.path.parent.name, item.path.name): item for item in items}
    assert set(found) == {
        ("1_blue_square", "000001.png"),
        ("3_red circle", "000001.png"),
        ("3_red circle", "000002.png"),
    }
    assert found["3_red circle", "000001.png"].caption == "a red circle, centered"
    assert found["3_red circle", "000002.png"].caption == "red circle"  # .caption is not read by default
    assert found["1_blue_square", "000001.png"].caption == "blue_square"
    assert found["1_blue_square", "000001.png"].size == (64, 32)
    assert [item.repeats for item in items] == [1, 3, 3]
    assert "misc" in caplog.text and "0_zero" in caplog.text

    by_caption_ext = scan_kohya_folder(kohya_root, caption_extension=".caption")
    assert [item.caption for item in by_caption_ext] == [
        "blue_square",
        "red circle",
        "from the caption extension",
    ]


def test_repeats_count_in_every_epoch(kohya_root: Path) -> None:
    dataset = KohyaDataset.from_folder(kohya_root, DatasetConfig(resolution=(64, 64), batch_size=2))
    for epoch in range(3):
        seen = Counter(index for batch in dataset.epoch_plan(epoch) for index, _ in batch)
        assert seen == {i: item.repeats for i, item in enumerate(dataset.items)}


def test_process_caption_shuffle_keeps_first_tokens() -> None:
    caption = "sks dog, red, grass, sunny, photo, outdoors"
    options = CaptionOptions(shuffle_caption=True, keep_tokens=2)
    results = {process_caption(caption, options, np.random.default_rng(seed)) for seed in range(20)}
    assert len(results) > 5
    for result in results:
        tags = result.split(", ")
        assert tags[:2] == ["sks dog", "red"]
        assert sorted(tags) == sorted(t.strip() for t in caption.split(","))
    same = [process_caption(caption, options, np.random.default_rng(7)) for _ in range(2)]
    assert same[0] == same[1]
    assert process_caption(caption, CaptionOptions(), np.random.default_rng(0)) == caption


def test_caption_dropout_rate() -> None:
    caption = "a, b, c"
    assert process_caption(caption, CaptionOptions(caption_dropout_rate=1.0), np.random.default_rng(0)) == ""
    options = CaptionOptions(caption_dropout_rate=0.25, shuffle_caption=True)
    dropped = [process_caption(caption, options, np.random.default_rng(s)) == "" for s in range(2000)]
    assert abs(np.mean(dropped) - 0.25) < 0.03


def test_dataset_is_a_pure_function_of_seed_epoch_and_batch(kohya_root: Path) -> None:
    config = DatasetConfig(
        resolution=(64, 64),
        batch_size=2,
        captions=CaptionOptions(shuffle_caption=True, caption_dropout_rate=0.3),
        flip=True,
        seed=3,
    )
    first = KohyaDataset.from_folder(kohya_root, config)
    again = KohyaDataset.from_folder(kohya_root, config)
    assert first.epoch_plan(1) == again.epoch_plan(1)
    assert first.epoch_plan(0) != first.epoch_plan(1)  # a new order each epoch
    for epoch in range(2):
        for batch_a, batch_b in zip(EpochBatches(first, epoch), EpochBatches(again, epoch), strict=True):
            assert batch_a["captions"] == batch_b["captions"]
            assert torch.equal(batch_a["pixel_values"], batch_b["pixel_values"])
    # a mid-epoch start gives the same batches as the tail of a full pass
    full, tail = EpochBatches(first, 1), EpochBatches(again, 1, start=2)
    assert full.batches[2:] == tail.batches
    other_seed = KohyaDataset.from_folder(kohya_root, DatasetConfig(**{**config.__dict__, "seed": 4}))
    assert [other_seed.epoch_plan(e) for e in range(4)] != [first.epoch_plan(e) for e in range(4)]


def test_bucket_resolutions_match_kohya() -> None:
    buckets = make_bucket_resolutions((512, 512), 256, 1024, 64)
    assert (512, 512) in buckets
    assert (256, 1024) in buckets and (1024, 256) in buckets
    assert (320, 768) in buckets and (768, 320) in buckets  # 262144 // 320 = 819 -> 768
    for w, h in buckets:
        assert w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0
        assert 256 <= w <= 1024 and 256 <= h <= 1024
        assert (h, w) in buckets
    tiny = make_bucket_resolutions((64, 64), 32, 128, 8)
    assert (64, 64) in tiny and (32, 128) in tiny and all(w % 8 == 0 and h % 8 == 0 for w, h in tiny)


def test_images_land_in_nearest_bucket_and_batches_never_mix(tmp_path: Path) -> None:
    root = tmp_path / "data"
    sizes = [(64, 64), (128, 40), (40, 128), (90, 60), (60, 90), (100, 100), (200, 50), (70, 64), (64, 70)]
    for i, size in enumerate(sizes):
        _image(root / "2_mixed" / f"{i:06d}.png", size, (i * 20, 100, 50))
    config = DatasetConfig(
        resolution=(64, 64), batch_size=3, min_bucket_size=32, max_bucket_size=128, bucket_step=8
    )
    dataset = KohyaDataset.from_folder(root, config)
    for item, bucket in zip(dataset.items, dataset.item_buckets, strict=True):
        ratio = item.size[0] / item.size[1]
        best = min(abs(b[0] / b[1] - ratio) for b in dataset.buckets)
        assert abs(bucket[0] / bucket[1] - ratio) == best
    assert len(set(dataset.item_buckets)) >= 4
    for samples in dataset.epoch_plan(0):
        assert len({dataset.item_buckets[index] for index, _ in samples}) == 1
        pixels = dataset.load_batch(0, samples)["pixel_values"]
        width, height = dataset.item_buckets[samples[0][0]]
        assert pixels.shape == (len(samples), 3, height, width)


def test_resize_crop_and_tensor_range() -> None:
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 50))  # a blue strip on the left edge: cropped away
    out = resize_and_crop(image, (32, 32))
    assert out.size == (32, 32)
    tensor = to_tensor(out)
    assert tensor.shape == (3, 32, 32)
    assert torch.allclose(tensor[:, 16, 16], torch.tensor([1.0, -1.0, -1.0]))
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert nearest_bucket((64, 64), [(64, 64), (48, 80)]) == (64, 64)


def test_flip_is_off_by_default(tmp_path: Path) -> None:
    root = tmp_path / "data"
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 32, 64))  # white on the left
    (root / "4_half").mkdir(parents=True)
    image.save(root / "4_half" / "000001.png")
    plain = KohyaDataset.from_folder(root, DatasetConfig(resolution=(64, 64), buckets=((64, 64),)))
    lefts = [plain.load_sample(0, 0, r)[0][0, 32, 0].item() for r in range(4)]
    assert lefts == [1.0] * 4
    flipping = KohyaDataset.from_folder(
        root, DatasetConfig(resolution=(64, 64), buckets=((64, 64),), flip=True)
    )
    flipped = [flipping.load_sample(e, 0, r)[0][0, 32, 0].item() for e in range(4) for r in range(4)]
    assert set(flipped) == {1.0, -1.0}
