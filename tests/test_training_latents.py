"""Cached latents (kohya's cache_latents): the same loss as encoding each step, saved and checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sfumato.models.loader import sd_alphas_cumprod
from sfumato.testing.tiny_models import build_components
from sfumato.training import DatasetConfig, DiffusionObjective, KohyaDataset, LatentCache, StepContext


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small images of two bucket sizes, so the cache handles more than one latent shape."""
    root = tmp_path_factory.mktemp("latents")
    folder = root / "1_things"
    folder.mkdir()
    for i in range(6):
        size = (64, 64) if i % 2 else (64, 32)
        image = Image.effect_noise(size, 40 + 10 * i).convert("RGB")
        image.save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"thing number {i}")
    return root


def _dataset(root: Path, **overrides: object) -> KohyaDataset:
    config = DatasetConfig(
        resolution=(64, 64), batch_size=3, buckets=((64, 64), (64, 32)), seed=3, **overrides
    )  # type: ignore[arg-type]
    return KohyaDataset.from_folder(root, config)


def _objective(cache: LatentCache | None) -> DiffusionObjective:
    parts = build_components("sd1", seed=0)
    return DiffusionObjective(
        parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, sd_alphas_cumprod(), latent_cache=cache
    )


def test_cached_posterior_gives_the_loss_of_encoding_every_step(root: Path) -> None:
    dataset = _dataset(root)
    vae = build_components("sd1", seed=0).vae.eval()
    cache = LatentCache.encode(dataset, vae, batch_size=4, progress=False)
    assert len(cache.mean) == len(dataset.items) == 6
    assert {tuple(m.shape) for m in cache.mean} == {(4, 8, 8), (4, 4, 8)}

    plain, cached = _objective(None), _objective(cache)
    for batch_plan in dataset.epoch_plan(0):
        batch = dataset.load_batch(0, batch_plan)
        step = 7
        with torch.no_grad():
            expected = plain.loss(batch, StepContext(step, 0, torch.Generator().manual_seed(step)))
            got = cached.loss(batch, StepContext(step, 0, torch.Generator().manual_seed(step)))
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (got, expected)
    # and the cache really is used: shifted means change the loss
    shifted = LatentCache([m + 1 for m in cache.mean], cache.std, cache.fingerprint)
    batch = dataset.load_batch(0, dataset.epoch_plan(0)[0])
    with torch.no_grad():
        moved = _objective(shifted).loss(batch, StepContext(7, 0, torch.Generator().manual_seed(7)))
        same = cached.loss(batch, StepContext(7, 0, torch.Generator().manual_seed(7)))
    assert not torch.allclose(moved, same)


def test_cache_saves_loads_and_refuses_other_images(root: Path, tmp_path: Path) -> None:
    dataset = _dataset(root)
    vae = build_components("sd1", seed=0).vae.eval()
    path = tmp_path / "latents.safetensors"
    made = LatentCache.load_or_encode(path, dataset, vae, progress=False)
    assert path.exists() and not path.with_name(path.name + ".partial").exists()
    loaded = LatentCache.load(path, dataset, vae)
    assert all(torch.equal(a, b) for a, b in zip(made.mean, loaded.mean, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(made.std, loaded.std, strict=True))

    other_vae = build_components("sd1", seed=1).vae.eval()
    with pytest.raises(ValueError, match="another VAE"):
        LatentCache.load(path, dataset, other_vae)

    fewer = KohyaDataset(dataset.items[:4], dataset.config)
    with pytest.raises(ValueError, match="other images"):
        LatentCache.load(path, fewer, vae)
    again = LatentCache.load_or_encode(path, fewer, vae, progress=False)  # re-encoded for the new set
    assert len(again.mean) == 4 and LatentCache.load(path, fewer, vae).fingerprint == again.fingerprint


def test_flipping_datasets_cannot_be_cached(root: Path) -> None:
    vae = build_components("sd1", seed=0).vae.eval()
    with pytest.raises(ValueError, match="flip"):
        LatentCache.encode(_dataset(root, flip=True), vae, progress=False)
