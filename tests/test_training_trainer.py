"""The training loop on tiny SD1 models: loss falls, kill-and-resume is bit-identical, EMA, logs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sfumato.models.loader import sd_alphas_cumprod
from sfumato.testing.tiny_models import build_components
from sfumato.training import (
    EMA,
    DatasetConfig,
    DiffusionObjective,
    KohyaDataset,
    Trainer,
    TrainerConfig,
    latest_checkpoint,
)
from sfumato.training.trainer import preserved_rng

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


@pytest.fixture(scope="module")
def colours_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four solid-colour 64 px squares, two repeats each, captioned with their colour."""
    root = tmp_path_factory.mktemp("colours")
    for name, rgb in COLOURS.items():
        folder = root / f"2_{name}"
        folder.mkdir()
        Image.new("RGB", (64, 64), rgb).save(folder / "000001.png")
        (folder / "000001.txt").write_text(f"a {name} square")
    return root


def _trainer(
    root: Path, output: Path, unet_format: torch.memory_format = torch.contiguous_format, **overrides: object
) -> Trainer:
    components = build_components("sd1", seed=0)
    components.unet.to(memory_format=unet_format)
    objective = DiffusionObjective(
        components.unet,
        components.vae,
        components.text_encoder,
        components.tokenizer,
        sd_alphas_cumprod(),
        train_text_encoder=True,
    )
    dataset = KohyaDataset.from_folder(
        root, DatasetConfig(resolution=(64, 64), batch_size=4, buckets=((64, 64),), seed=1)
    )
    settings: dict[str, object] = {
        "output_dir": output,
        "max_steps": 6,
        "learning_rate": 1e-3,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 2,
        "ema_decay": 0.9,
        "progress_bar": False,
        **overrides,
    }
    return Trainer(objective, dataset, TrainerConfig(**settings))  # type: ignore[arg-type]


def _log(output: Path) -> list[dict[str, str]]:
    with (output / "log.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_loss_falls_on_solid_colours(colours_root: Path, tmp_path: Path) -> None:
    """Seeded, so reproducible on CPU: mean loss of steps 1-5 was 0.853, of steps 26-30 0.273."""
    trainer = _trainer(colours_root, tmp_path, max_steps=30, lr_scheduler="constant", lr_warmup_steps=0)
    trainer.train()
    losses = [float(row["loss"]) for row in _log(tmp_path)]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_kill_and_resume_equals_uninterrupted(colours_root: Path, tmp_path: Path) -> None:
    straight = _trainer(colours_root, tmp_path / "straight")
    straight.train()

    killed_at = 4

    def kill(step: int, modules: dict[str, torch.nn.Module]) -> None:
        if step == killed_at:
            raise KeyboardInterrupt  # the process dies after step 4, before saving it

    interrupted = _trainer(colours_root, tmp_path / "resumed", save_every=3, sample_every=1)
    interrupted.on_sample = kill
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    checkpoint = latest_checkpoint(tmp_path / "resumed")
    assert checkpoint is not None and checkpoint.name == "step-000003"
    assert len(_log(tmp_path / "resumed")) == killed_at

    torch.manual_seed(12345)  # whatever the new process's global RNG holds, the checkpoint restores it
    resumed = _trainer(colours_root, tmp_path / "resumed")
    resumed.train(resume_from=checkpoint)

    assert resumed.step == straight.step == 6
    assert resumed.position == straight.position
    for name, value in straight.objective.state_dict().items():
        assert torch.equal(value, resumed.objective.state_dict()[name]), name
    assert resumed.ema is not None and straight.ema is not None
    for a, b in zip(straight.ema.shadow, resumed.ema.shadow, strict=True):
        assert torch.equal(a, b)
    final_straight = load_file(tmp_path / "straight" / "model.safetensors")
    final_resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert final_straight.keys() == final_resumed.keys()
    assert all(torch.equal(final_straight[k], final_resumed[k]) for k in final_straight)
    # the log was cut back to the checkpoint and continued: one row per step, same losses
    assert [row["step"] for row in _log(tmp_path / "resumed")] == [str(s) for s in range(1, 7)]
    assert [r["loss"] for r in _log(tmp_path / "resumed")] == [r["loss"] for r in _log(tmp_path / "straight")]


def test_checkpoint_and_final_model_files(colours_root: Path, tmp_path: Path) -> None:
    samples: list[int] = []

    def on_sample(step: int, modules: dict[str, torch.nn.Module]) -> None:
        assert not modules["unet"].training and not torch.is_grad_enabled()
        samples.append(step)

    trainer = _trainer(colours_root, tmp_path, max_steps=2, gradient_accumulation_steps=2, sample_every=1)
    trainer.on_sample = on_sample
    final = trainer.train()
    assert trainer.objective.modules()["unet"].training  # back to training after sampling
    assert samples == [1, 2]
    assert trainer.position.batch == 4 % trainer.batches_per_epoch
    rows = _log(tmp_path)
    assert [row["step"] for row in rows] == ["1", "2"]
    assert all(float(row["loss"]) > 0 and float(row["seconds"]) > 0 for row in rows)
    assert float(rows[0]["lr"]) == 0.0 and float(rows[1]["lr"]) == pytest.approx(5e-4)  # warmup 2 steps
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.name == "step-000002"
    assert {p.name for p in checkpoint.iterdir()} == {
        "model.safetensors",
        "ema.safetensors",
        "state.pt",
        "rng-0.pt",
        "trainer.json",
    }
    # the final model holds the EMA weights, the checkpoint's model the raw ones
    raw = load_file(checkpoint / "model.safetensors")
    exported = load_file(final)
    assert raw.keys() == exported.keys() and any(k.startswith("text_encoder.") for k in raw)
    assert any(not torch.equal(raw[k], exported[k]) for k in raw)
    assert trainer.ema is not None
    with trainer.ema.swapped():
        assert all(torch.equal(v, exported[k]) for k, v in trainer.objective.state_dict().items())


def test_channels_last_unet_saves_and_resumes(colours_root: Path, tmp_path: Path) -> None:
    """A channels_last UNet (5 % faster convolutions on CPU) checkpoints: safetensors takes only
    contiguous tensors, and the EMA's shadows keep their parameters' memory format."""
    trainer = _trainer(colours_root, tmp_path, torch.channels_last, max_steps=2, save_every=1)
    assert trainer.ema is not None and not all(s.is_contiguous() for s in trainer.ema.shadow)
    trainer.train()
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.name == "step-000002"
    saved = load_file(checkpoint / "ema.safetensors")
    assert all(torch.equal(saved[f"shadow.{i}"], s) for i, s in enumerate(trainer.ema.shadow))
    resumed = _trainer(colours_root, tmp_path / "resumed", torch.channels_last, max_steps=3)
    resumed.train(resume_from=checkpoint)
    assert resumed.step == 3


def test_gradient_checkpointing_changes_nothing_but_memory(colours_root: Path, tmp_path: Path) -> None:
    plain = _trainer(colours_root, tmp_path, max_steps=2)
    plain.train()
    # the same output folder again: the new run replaces the old checkpoint
    checkpointed = _trainer(colours_root, tmp_path, max_steps=2, gradient_checkpointing=True)
    modules = checkpointed.objective.modules()
    assert modules["unet"].is_gradient_checkpointing
    assert modules["text_encoder"].is_gradient_checkpointing
    assert not modules["vae"].is_gradient_checkpointing  # frozen
    checkpointed.train()
    expected = plain.objective.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in checkpointed.objective.state_dict().items())
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]


def test_ema_update_closed_form_and_exact_swap() -> None:
    parameter = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
    ema = EMA([parameter], decay=0.3, warmup=True)  # warmup: 0.1, 0.18, 0.25, then 0.3
    expected = parameter.detach().clone()
    for n, value in enumerate([4.0, 8.0, -2.0, 3.0]):
        with torch.no_grad():
            parameter.fill_(value)
        decay = min(0.3, (1 + n) / (10 + n))
        assert ema.current_decay() == decay
        ema.update()
        expected = decay * expected + (1 - decay) * value
        assert torch.allclose(ema.shadow[0], expected)
    assert ema.current_decay() == 0.3 and ema.num_updates == 4
    no_warmup = EMA([parameter], decay=0.9, warmup=False)
    assert no_warmup.current_decay() == 0.9

    before = parameter.detach().clone()
    shadow = ema.shadow[0].clone()
    with ema.swapped():
        assert torch.equal(parameter.detach(), shadow)
    assert torch.equal(parameter.detach(), before) and torch.equal(ema.shadow[0], shadow)

    state = ema.state_dict()
    restored = EMA([parameter], decay=0.3)
    restored.load_state_dict(state)
    assert restored.num_updates == 4 and torch.equal(restored.shadow[0], shadow)


def test_config_rejects_impossible_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TrainerConfig(output_dir=tmp_path, max_steps=0)
    with pytest.raises(ValueError):
        TrainerConfig(output_dir=tmp_path, max_steps=5, save_every=-1)


def test_preserved_rng_restores_global_state() -> None:
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    with preserved_rng():
        torch.rand(10)
    assert torch.equal(torch.rand(3), expected)


def test_stages_with_different_mixed_precision_run_in_one_process(colours_root: Path, tmp_path: Path) -> None:
    """The default model's recipe trains its VAE under bf16 autocast, then fp32 stages; accelerate's
    process-wide state refused the second Accelerator until the trainer reset it."""
    bf16 = _trainer(colours_root, tmp_path / "bf16", max_steps=1, mixed_precision="bf16")
    bf16.train()
    fp32 = _trainer(colours_root, tmp_path / "fp32", max_steps=1)
    fp32.train()
    assert fp32.accelerator.mixed_precision == "no"
    assert len(_log(tmp_path / "bf16")) == len(_log(tmp_path / "fp32")) == 1
