"""kohya's `--cache_latents`: every image's VAE posterior encoded once, not at every step.

With a frozen VAE, encoding the same image again each epoch is wasted work: on the default model it was
a sixth of a training step. The cache keeps each image's posterior *mean and std* (not one sample), so a
step still draws a fresh latent from the posterior on its own generator, exactly as
`DiffusionObjective` does when it encodes pixels itself. Images are encoded at their bucket size, as
the dataset loads them; random flips would make a cached latent wrong, so a dataset with `flip` is
refused (kohya refuses the same combination).

A cache can be saved beside a run (`save` / `load`, safetensors), so resuming a killed run does not
encode everything again; the file records which images and which VAE weights it was made for, and `load` refuses others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from sfumato.training.dataset import KohyaDataset


def _fingerprint(dataset: KohyaDataset, vae: AutoencoderKL) -> str:
    """Which images, in which order, at which bucket sizes, encoded by which VAE weights: what a
    cache's rows stand for."""
    digest = hashlib.sha256()
    for item, bucket in zip(dataset.items, dataset.item_buckets, strict=True):
        digest.update(f"{item.path}|{bucket[0]}x{bucket[1]}\n".encode())
    for name, tensor in vae.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class LatentCache:
    """Posterior mean and std per dataset item (row `i` is `dataset.items[i]`), unscaled."""

    mean: Sequence[Tensor]
    std: Sequence[Tensor]
    fingerprint: str

    @classmethod
    @torch.no_grad()
    def encode(
        cls, dataset: KohyaDataset, vae: AutoencoderKL, *, batch_size: int = 128, progress: bool = True
    ) -> LatentCache:
        """Encode every item of `dataset` once with `vae` (on the VAE's device and dtype)."""
        if dataset.config.flip:
            raise ValueError("latents cannot be cached for a dataset with random flips")
        parameter = next(vae.parameters())
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, bucket in enumerate(dataset.item_buckets):
            by_bucket.setdefault(bucket, []).append(index)
        mean: list[Tensor | None] = [None] * len(dataset.items)
        std: list[Tensor | None] = [None] * len(dataset.items)
        bar = tqdm(total=len(dataset.items), desc="caching latents", disable=not progress)
        for indices in by_bucket.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                pixels = dataset.load_batch(0, [(index, 0) for index in chunk])["pixel_values"]
                posterior = vae.encode(pixels.to(parameter.device, parameter.dtype)).latent_dist
                for row, index in enumerate(chunk):
                    mean[index] = (
                        posterior.mean[row].float().cpu().clone(memory_format=torch.contiguous_format)
                    )  # not a view of the batch
                    std[index] = posterior.std[row].float().cpu().clone(memory_format=torch.contiguous_format)
                bar.update(len(chunk))
        bar.close()
        return cls(mean, std, _fingerprint(dataset, vae))  # type: ignore[arg-type]

    def sample(self, indices: Tensor, generator: torch.Generator) -> Tensor:
        """A posterior sample for each item in `indices` (one batch: one bucket, so one shape)."""
        mean = torch.stack([self.mean[i] for i in indices.tolist()])
        std = torch.stack([self.std[i] for i in indices.tolist()])
        return mean + std * torch.randn(mean.shape, generator=generator)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"mean.{i}": t for i, t in enumerate(self.mean)} | {
            f"std.{i}": t for i, t in enumerate(self.std)
        }
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, partial, metadata={"fingerprint": self.fingerprint})
        partial.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, dataset: KohyaDataset, vae: AutoencoderKL) -> LatentCache:
        """A saved cache, checked to be for exactly `dataset`'s images and this VAE."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            fingerprint = (handle.metadata() or {}).get("fingerprint")
        if fingerprint != _fingerprint(dataset, vae):
            raise ValueError(f"{path} caches other images or another VAE's latents")
        tensors = load_file(str(path))
        count = len(dataset.items)
        return cls(
            [tensors[f"mean.{i}"] for i in range(count)],
            [tensors[f"std.{i}"] for i in range(count)],
            fingerprint,
        )

    @classmethod
    def load_or_encode(
        cls, path: str | Path, dataset: KohyaDataset, vae: AutoencoderKL, **options: object
    ) -> LatentCache:
        """The cache saved at `path` if it fits `dataset`, else a new one, encoded and saved there."""
        if Path(path).exists():
            try:
                return cls.load(path, dataset, vae)
            except ValueError:
                pass
        cache = cls.encode(dataset, vae, **options)  # type: ignore[arg-type]
        cache.save(path)
        return cache
