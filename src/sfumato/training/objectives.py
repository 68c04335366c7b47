"""Training objectives: the diffusion loss (eps / v), min-SNR-γ weighting, noise offset, timestep bias,
and a VAE loss.

The closed forms are written out here rather than taken from a diffusers scheduler because they are a
few lines each, the trainer needs them on explicit CPU generators (seeded per step, see
`sfumato.training.trainer`), and the tests check them against the formulas directly. In VP terms, with
ᾱ_t = alphas_cumprod[t], α = √ᾱ_t, σ = √(1 − ᾱ_t):

    x_t = α·x0 + σ·ε            (what the network sees)
    eps target = ε;   v target = α·ε − σ·x0   (Salimans & Ho 2022)
    SNR(t) = α² / σ²
    min-SNR-γ weight (Hang et al. 2023) = min(SNR, γ) / SNR for eps, min(SNR, γ) / (SNR + 1) for v

An objective implements `sfumato.training.trainer.Objective`; `DiffusionObjective` trains an SD1-family
UNet (and optionally its text encoder) on a frozen VAE, `VAEObjective` trains the VAE itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer

from sfumato.training.latents import LatentCache
from sfumato.training.trainer import StepContext

Prediction = Literal["epsilon", "v_prediction"]


@dataclass(frozen=True)
class TimestepBias:
    """Draw some timesteps more often than others: diffusers' `--timestep_bias_*` options of its SDXL
    training example, with their meaning. `strategy` "earlier" draws the first `portion` of the timesteps
    (the least noisy) `multiplier` times as often as the rest, "later" the last `portion` (the noisiest),
    "range" those in [begin, end); "none" draws uniformly.

    Why it exists: fine detail is drawn in the low-noise steps, which a uniform draw visits rarely.
    Measured on the embedded default model v8 (img2img from the true picture, 100 prompts): its VAE
    alone reads shape 0.945; denoising from σ = 0.4 (t ≈ 130, the last 7 of 20 Karras steps) drops it
    to 0.86, from σ = 1.5 to 0.77, from pure noise to 0.745. The trade is real, though: retrained with
    t < 500 drawn 3× as often (and no min-SNR), shape rose only to 0.69 (0.67) while colour fell to 0.77
    (0.925) and background to 0.87 (0.997): the noisy steps drawn less often are where colours are set.
    """

    strategy: Literal["none", "earlier", "later", "range"] = "none"
    multiplier: float = 1.0
    portion: float = 0.25
    begin: int = 0
    end: int = 1000

    def __post_init__(self) -> None:
        if self.multiplier <= 0:
            raise ValueError("timestep bias multiplier must be positive")
        if not 0 < self.portion <= 1:
            raise ValueError("timestep bias portion must be in (0, 1]")
        if self.strategy == "range" and not 0 <= self.begin < self.end:
            raise ValueError("timestep bias range needs 0 <= begin < end")

    def probabilities(self, num_train_timesteps: int) -> Tensor:
        """The probability of drawing each timestep."""
        weights = torch.ones(num_train_timesteps, dtype=torch.float64)
        biased = round(self.portion * num_train_timesteps)
        chosen = {
            "none": slice(0, 0),
            "earlier": slice(0, biased),
            "later": slice(num_train_timesteps - biased, num_train_timesteps),
            "range": slice(self.begin, min(self.end, num_train_timesteps)),
        }[self.strategy]
        weights[chosen] *= self.multiplier
        return weights / weights.sum()


def sample_timesteps(
    batch_size: int,
    num_train_timesteps: int,
    generator: torch.Generator,
    bias: TimestepBias | None = None,
) -> Tensor:
    """Timesteps drawn from [0, num_train_timesteps) on the CPU generator: uniformly, or as `bias` says."""
    if bias is None or bias.strategy == "none":
        return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
    probabilities = bias.probabilities(num_train_timesteps)
    return torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)


def _coefficients(timesteps: Tensor, alphas_cumprod: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """α and σ at `timesteps`, shaped to broadcast over `like` (B, ...)."""
    alpha_bar = alphas_cumprod.to(like.device)[timesteps.to(like.device)].to(like.dtype)
    shape = (-1,) + (1,) * (like.ndim - 1)
    return alpha_bar.sqrt().view(shape), (1 - alpha_bar).sqrt().view(shape)


def add_noise(x0: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_t = α·x0 + σ·ε."""
    alpha, sigma = _coefficients(timesteps, alphas_cumprod, x0)
    return alpha * x0 + sigma * noise


def prediction_target(
    prediction_type: Prediction, x0: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor
) -> Tensor:
    """ε for eps-prediction, v = α·ε − σ·x0 for v-prediction."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        alpha, sigma = _coefficients(timesteps, alphas_cumprod, x0)
        return alpha * noise - sigma * x0
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def snr(timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) at each timestep."""
    alpha_bar = alphas_cumprod[timesteps]
    return alpha_bar / (1 - alpha_bar)


def min_snr_weights(
    timesteps: Tensor, alphas_cumprod: Tensor, gamma: float, prediction_type: Prediction
) -> Tensor:
    """Per-sample loss weights of min-SNR-γ: the eps (or v) MSE rescaled to an x0 MSE clipped at γ."""
    ratio = snr(timesteps, alphas_cumprod)
    clipped = ratio.clamp(max=gamma)
    return clipped / (ratio + 1) if prediction_type == "v_prediction" else clipped / ratio


def sample_noise(shape: torch.Size, generator: torch.Generator, offset: float = 0.0) -> Tensor:
    """Gaussian noise on the CPU generator, plus `offset` × a per-channel constant ("noise offset",
    which lets the model learn to change an image's mean brightness)."""
    noise = torch.randn(shape, generator=generator)
    if offset:
        noise = noise + offset * torch.randn(shape[:2] + (1,) * (len(shape) - 2), generator=generator)
    return noise


def weighted_mse(prediction: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """MSE over each sample's elements, optionally weighted per sample, then averaged (in fp32)."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()


def prefixed_state_dict(modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """Several modules' weights in one flat dict, each key prefixed with its module's name."""
    return {
        f"{name}.{key}": value
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }


def load_prefixed_state_dict(modules: Mapping[str, nn.Module], state: Mapping[str, Tensor]) -> None:
    """The inverse of `prefixed_state_dict`: each module takes the keys under its name."""
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def caption_ids(tokenizer: CLIPTokenizer, captions: list[str], device: torch.device) -> Tensor:
    """Token ids of captions padded/truncated to the tokenizer's 77 tokens."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


class DiffusionObjective:
    """Text-to-image denoising loss for an SD1-family model: frozen VAE, UNet trained, text encoder
    trained only if `train_text_encoder` (the from-scratch default model trains both).

    Batches are `KohyaDataset` dicts (`pixel_values`, `captions`, `item_indices`). Latents are the VAE
    posterior sample (drawn on the step generator) × the VAE's scaling factor, as in SD training; with a
    `latent_cache` the posterior comes from the cache instead of encoding the pixels again.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        alphas_cumprod: Tensor,
        *,
        prediction_type: Prediction = "epsilon",
        train_text_encoder: bool = False,
        min_snr_gamma: float | None = None,
        noise_offset: float = 0.0,
        timestep_bias: TimestepBias | None = None,
        latent_cache: LatentCache | None = None,
    ) -> None:
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.alphas_cumprod = alphas_cumprod.float()
        self.prediction_type = prediction_type
        self.train_text_encoder = train_text_encoder
        self.min_snr_gamma = min_snr_gamma
        self.noise_offset = noise_offset
        self.timestep_bias = timestep_bias
        self.latent_cache = latent_cache

    def _trained(self) -> dict[str, nn.Module]:
        trained: dict[str, nn.Module] = {"unet": self.unet}
        if self.train_text_encoder:
            trained["text_encoder"] = self.text_encoder
        return trained

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        for module in self._trained().values():
            yield from module.parameters()

    def state_dict(self) -> dict[str, Tensor]:
        return prefixed_state_dict(self._trained())

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        load_prefixed_state_dict(self._trained(), state)

    def encode_captions(self, captions: list[str], device: torch.device) -> Tensor:
        """CLIP last hidden states of the padded 77-token captions (SD1 conditioning)."""
        ids = caption_ids(self.tokenizer, captions, device)
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            return self.text_encoder(ids)[0]

    @torch.no_grad()
    def latents(
        self, batch: Mapping[str, object], generator: torch.Generator, device: torch.device
    ) -> Tensor:
        """Scaled posterior samples of the batch's images: from the cache, or by encoding the pixels."""
        if self.latent_cache is not None:
            indices = batch["item_indices"]
            assert isinstance(indices, Tensor)
            sample = self.latent_cache.sample(indices, generator).to(device)
        else:
            pixels = batch["pixel_values"]
            assert isinstance(pixels, Tensor)
            posterior = self.vae.encode(pixels.to(device, self.vae.dtype)).latent_dist
            sample = posterior.sample(generator=generator)
        return sample.float() * self.vae.config.scaling_factor

    def loss(self, batch: Mapping[str, object], step: StepContext) -> Tensor:
        device = next(self.unet.parameters()).device
        latents = self.latents(batch, step.generator, device)
        noise = sample_noise(latents.shape, step.generator, self.noise_offset).to(device)
        timesteps = sample_timesteps(
            latents.shape[0], len(self.alphas_cumprod), step.generator, self.timestep_bias
        )
        noisy = add_noise(latents, noise, timesteps, self.alphas_cumprod)
        conditioning = self.encode_captions(list(batch["captions"]), device)  # type: ignore[arg-type]
        prediction = self.unet(noisy, timesteps.to(device), conditioning).sample
        target = prediction_target(self.prediction_type, latents, noise, timesteps, self.alphas_cumprod)
        weights = None
        if self.min_snr_gamma is not None:
            weights = min_snr_weights(
                timesteps, self.alphas_cumprod, self.min_snr_gamma, self.prediction_type
            )
        return weighted_mse(prediction, target, weights)


class VAEObjective:
    """AutoencoderKL loss: reconstruction (L1 or MSE) + `kl_weight` × KL to N(0, I).

    No perceptual or adversarial term (the real SD VAE had both): our default model's images are flat
    synthetic shapes, where pixel losses suffice and no extra networks are needed. The KL is summed over
    a sample's latent elements and divided by its pixel count, so `kl_weight` has the meaning it has in
    LDM's configs (where both terms are per-sample sums) while the reconstruction stays a mean.

    `foreground_weight` w > 0 weighs each pixel that differs from its image's median colour by 1 + w
    (the weights normalised to mean 1 over the batch). On plain-background images the objects are a few
    percent of the pixels, so an unweighted loss is spent on the background; measured on the shapes
    world, 600 steps with w = 10 took the checker's colour accuracy on reconstructions from 0.59 to 0.84.

    `crop_size` c trains on c×c crops instead of whole images (the networks are convolutional, so the
    VAE still codes whole images), centred with probability `object_crop_share` on a random foreground
    pixel (same rule as the weighting) and placed uniformly otherwise. Compute then goes to objects'
    edges rather than to flat background: measured on the shapes world at equal pixels per step
    (700 steps, batch 16 of 64² against batch 64 of 32² crops), the checker read reconstructions with
    colour 0.15 → 0.85, shape 0.18 → 0.45, position 0.88 → 0.99.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        *,
        reconstruction: Literal["l1", "mse"] = "l1",
        kl_weight: float = 1e-6,
        foreground_weight: float = 0.0,
        crop_size: int | None = None,
        object_crop_share: float = 0.8,
    ) -> None:
        self.vae = vae
        self.reconstruction = reconstruction
        self.kl_weight = kl_weight
        self.foreground_weight = foreground_weight
        self.crop_size = crop_size
        self.object_crop_share = object_crop_share

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.vae.parameters()

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.vae.state_dict())

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.vae.load_state_dict(state)

    @staticmethod
    def foreground(pixels: Tensor) -> Tensor:
        """(B, 1, H, W) mask of pixels whose colour is more than 0.1 (summed over channels, in [-1, 1]
        units) from their image's per-channel median."""
        median = pixels.flatten(2).median(dim=2).values[..., None, None]
        return (pixels - median).abs().sum(dim=1, keepdim=True) > 0.1

    def pixel_weights(self, pixels: Tensor) -> Tensor:
        """1 + w on foreground pixels, else 1."""
        return 1 + self.foreground_weight * self.foreground(pixels).float()

    def crops(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        """One `crop_size` crop per image, object-centred with probability `object_crop_share`."""
        size = self.crop_size
        assert size is not None
        height, width = pixels.shape[-2:]
        if size > min(height, width):
            raise ValueError(f"crop_size {size} is larger than the {width}x{height} images")
        mask = self.foreground(pixels)[:, 0]
        crops = []
        for image, image_mask in zip(pixels, mask, strict=True):
            ys, xs = torch.nonzero(image_mask, as_tuple=True)
            if len(ys) and torch.rand(1, generator=generator).item() < self.object_crop_share:
                pick = int(torch.randint(len(ys), (1,), generator=generator))
                top, left = int(ys[pick]) - size // 2, int(xs[pick]) - size // 2
            else:
                top = int(torch.randint(height - size + 1, (1,), generator=generator))
                left = int(torch.randint(width - size + 1, (1,), generator=generator))
            top, left = min(max(top, 0), height - size), min(max(left, 0), width - size)
            crops.append(image[:, top : top + size, left : left + size])
        return torch.stack(crops)

    def loss(self, batch: Mapping[str, object], step: StepContext) -> Tensor:
        pixels = batch["pixel_values"]
        assert isinstance(pixels, Tensor)
        pixels = pixels.to(next(self.vae.parameters()).device).float()
        if self.crop_size is not None:
            pixels = self.crops(pixels, step.generator)
        posterior = self.vae.encode(pixels).latent_dist
        decoded = self.vae.decode(posterior.sample(generator=step.generator)).sample.float()
        error = (decoded - pixels).abs() if self.reconstruction == "l1" else (decoded - pixels) ** 2
        if self.foreground_weight:
            weights = self.pixel_weights(pixels)
            reconstruction = (error * weights).mean() / weights.mean()
        else:
            reconstruction = error.mean()
        kl = posterior.kl().float().mean() / pixels[0].numel()
        return reconstruction + self.kl_weight * kl
