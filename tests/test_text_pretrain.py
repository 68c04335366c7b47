"""Text-encoder pretraining on the shapes world's ground truth: labels match scenes, heads learn them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from sfumato.data.shapes import (
    COLOURS,
    LABEL_CLASSES,
    LABEL_NAMES,
    POSITIONS,
    SHAPES,
    SIZES,
    UNNAMED_LABEL,
    dataset_labels,
    random_scene,
    scene_labels,
    write_dataset,
)
from sfumato.testing.tiny_models import build_components
from sfumato.training import CaptionLabelObjective, DatasetConfig, KohyaDataset, Trainer, TrainerConfig


def test_scene_labels_name_the_scene() -> None:
    """Decoding the class indices gives back the scene; an absent second object is its own class."""
    vocabularies = {"shape": SHAPES, "colour": list(COLOURS), "size": list(SIZES), "cell": POSITIONS}
    rng = random.Random(3)
    seen_counts = set()
    for _ in range(200):
        scene = random_scene(rng)
        labels = dict(zip(LABEL_NAMES, scene_labels(scene), strict=True))
        assert list(COLOURS)[labels["background"]] == scene.background
        assert labels["count"] == len(scene.objects) - 1
        seen_counts.add(len(scene.objects))
        for slot in (1, 2):
            for attribute, vocabulary in vocabularies.items():
                index = labels[f"{slot}.{attribute}"]
                assert 0 <= index < LABEL_CLASSES[LABEL_NAMES.index(f"{slot}.{attribute}")]
                if slot <= len(scene.objects):
                    assert vocabulary[index] == getattr(scene.objects[slot - 1], attribute)
                else:
                    assert index == len(vocabulary)
    assert seen_counts == {1, 2}


def test_pretraining_separates_the_attributes(tmp_path: Path) -> None:
    """A tiny encoder learns colour and position from the captions of a written dataset: the loss
    falls and the heads, at chance before training, read most training captions right afterwards."""
    write_dataset(tmp_path / "data", 48, seed=11, size=16)
    data = KohyaDataset.from_folder(
        tmp_path / "data", DatasetConfig(resolution=(16, 16), batch_size=16, buckets=((16, 16),))
    )
    labels = torch.tensor(dataset_labels([item.path for item in data.items]))
    texts = [item.caption for item in data.items]
    components = build_components("sd1", seed=0)
    objective = CaptionLabelObjective(components.text_encoder, components.tokenizer, labels, LABEL_CLASSES)
    colour, cell = LABEL_NAMES.index("1.colour"), LABEL_NAMES.index("1.cell")
    before = objective.accuracy(texts, labels)
    config = TrainerConfig(
        output_dir=tmp_path / "run", max_steps=120, learning_rate=3e-3, progress_bar=False, tensorboard=False
    )
    Trainer(objective, data, config).train()
    after = objective.accuracy(texts, labels)
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]
    losses = [float(row.split(",")[1]) for row in rows]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert before[colour] < 0.4 and before[cell] < 0.4
    assert after[colour] > 0.8 and after[cell] > 0.8


def test_labels_must_cover_every_head() -> None:
    components = build_components("sd1", seed=0)
    with pytest.raises(ValueError, match="labels must be"):
        CaptionLabelObjective(components.text_encoder, components.tokenizer, torch.zeros(4, 3), LABEL_CLASSES)


def test_unnamed_attributes_are_ignored() -> None:
    """A caption that leaves the size and cell out gives those heads no target: their labels are
    ignored by the loss (the same loss whatever the head predicts) and left out of the accuracy."""
    scene = random_scene(random.Random(5), p_two=0.0)
    full, vague = scene_labels(scene), scene_labels(scene, ("size", "cell"))
    ignored = [name for name, a, b in zip(LABEL_NAMES, full, vague, strict=True) if a != b]
    assert ignored == ["1.size", "1.cell"] and vague[LABEL_NAMES.index("1.size")] == UNNAMED_LABEL
    components = build_components("sd1", seed=0)
    labels = torch.tensor([vague, full])
    objective = CaptionLabelObjective(components.text_encoder, components.tokenizer, labels, LABEL_CLASSES)
    batch = {"item_indices": torch.tensor([0]), "captions": ["a red circle on a white background"]}
    before = objective.loss(batch, None)  # type: ignore[arg-type]
    size_head = objective.heads[LABEL_NAMES.index("1.size")]
    with torch.no_grad():
        size_head.bias.add_(torch.tensor([50.0, -50.0, 0.0, 0.0]))
    assert torch.isfinite(before) and objective.loss(batch, None) == before  # type: ignore[arg-type]
    full_batch = {"item_indices": torch.tensor([1]), "captions": ["a red circle on a white background"]}
    assert objective.loss(full_batch, None) != before  # type: ignore[arg-type]
    accuracy = objective.accuracy(["x", "y"], torch.tensor([vague, vague]))
    size_accuracy = accuracy[LABEL_NAMES.index("1.size")]
    assert size_accuracy != size_accuracy  # NaN: no named size to score
