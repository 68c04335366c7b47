"""sfumato's training core: one loop, many kinds of training.

How it is organised
-------------------
- `dataset`: kohya-compatible data. `KohyaDataset.from_folder(root, DatasetConfig(...))` reads
  `root/{repeats}_{name}/*.png` + captions, buckets images by aspect ratio and plans each epoch's batches
  (one bucket per batch) as a pure function of (seed, epoch), so a run can resume mid-epoch.
- `objectives`: what is learned. Closed-form pieces (noising, eps/v targets, min-SNR-γ, noise offset,
  timestep bias, weighted MSE) plus `DiffusionObjective` (SD1-family text-to-image: UNet, optionally
  the text encoder, on a frozen VAE) and `VAEObjective` (AutoencoderKL: L1/MSE + KL, optional
  foreground weighting).
- `latents`: `LatentCache`, kohya's cache_latents: each image's VAE posterior (mean, std) encoded once
  and sampled afresh each step, so a frozen VAE costs nothing per step (`DiffusionObjective(...,
  latent_cache=...)`); saved beside a run and refused for other images or another VAE.
- `text_pretrain`: `CaptionLabelObjective`, a from-scratch text encoder taught to name each labelled
  attribute of its caption (linear heads on the pooled state) before any UNet trains on it.
- `ema`: `EMA`, the moving average of the trained weights, with warmup and an exact swap.
- `trainer`: `Trainer(objective, dataset, TrainerConfig(...), on_sample=...)`. accelerate supplies
  devices, DDP, mixed precision and gradient accumulation; torch AdamW; diffusers the LR schedules. The
  trainer adds gradient clipping and checkpointing, EMA, checkpoints that resume bit-identically,
  sampling callbacks, a tqdm bar, `log.csv` (step, loss, lr, seconds) and TensorBoard when installed.

A run writes into `output_dir`:

    log.csv                         one row per optimizer step
    checkpoints/step-000500/        model.safetensors (objective.state_dict()), ema.safetensors,
                                    state.pt (optimizer, LR scheduler, loss scaler, step, dataset
                                    position), rng-{process}.pt, trainer.json (the config, for reading)
    model.safetensors               the final weights: the EMA ones when EMA is on

`trainer.train(resume_from=latest_checkpoint(output_dir))` continues a killed run; on CPU the result is
bit-identical to a run that was never stopped (tests/test_training_trainer.py proves it).

Plugging in a new kind of training (LoRA, textual inversion, Dreambooth, hypernetworks)
-------------------------------------------------------------------------------------
Write an object satisfying `trainer.Objective`; the loop, data, checkpoints and logs come for free.

1. `modules()`: every network the loss touches (by name); the trainer moves them to the device, freezes
   every parameter not in `trainable_parameters()`, sets train/eval mode, turns on gradient
   checkpointing where asked, and passes them to `on_sample` (with EMA weights swapped in).
2. `trainable_parameters()`: exactly what the optimizer updates.
   - LoRA / LyCORIS: inject the adapter layers into the UNet (and text encoder) first, then return the
     adapter parameters only. Reuse `DiffusionObjective`'s loss (subclass it, override
     `trainable_parameters`, `state_dict` and `load_state_dict`).
   - Textual inversion: keep the new vectors in their own small `nn.Parameter` and splice them into
     the token embeddings inside `loss` (a forward hook on the embedding layer), and return only that
     parameter. Returning the whole embedding matrix would not do: AdamW's weight decay moves every
     row, gradient or not. Everything else stays frozen.
   - Dreambooth: the whole UNet (and text encoder) as `DiffusionObjective` does. Prior preservation
     needs class images (kohya's `reg_data_dir`), which `KohyaDataset` does not read yet; the objective
     would then weight the class half of each batch by the prior-loss weight.
   - Hypernetworks: the hypernetwork modules' parameters, applied to the cross-attention k/v.
3. `loss(batch, step)`: draw all randomness from `step.generator` (a CPU generator seeded per step and
   micro-batch); never from the global RNG, or resume stops being exact.
4. `state_dict()` / `load_state_dict()`: the trained weights only, in the key layout of the file the
   trainer should produce (`model.safetensors`), e.g. kohya's `lora_unet_*` keys for a LoRA or A1111's
   `string_to_param` for an embedding; the converter belongs to the objective, not to the trainer.

Mixed precision: `TrainerConfig(mixed_precision="bf16")` is autocast; choose it where
`sfumato.devices.bf16_autocast_helps(device)` says the device has bf16 matrix units. On this project's
2-core AMX CPU it halved the default model's VAE step (0.59 -> 0.30 s) but gave its small UNet nothing
(1.03×, `benchmarks/default_model_training.py`): measure each network before turning it on.

The embedded default model (`scripts/train_default_model.py`) is the worked example: its VAE with
`VAEObjective` (a plain stage, then a foreground-weighted one, under bf16 autocast), its text encoder
with `CaptionLabelObjective` on the renderer's ground truth, then `DiffusionObjective(...,
train_text_encoder=False, latent_cache=...)` over the synthetic shapes dataset, all through the same
`Trainer`; checkpoints of the running UNet stage are exported and scored with `sfumato eval shapes`.
"""

from sfumato.training.dataset import (
    CaptionOptions,
    DatasetConfig,
    DatasetPosition,
    ImageItem,
    KohyaDataset,
    make_bucket_resolutions,
    scan_kohya_folder,
)
from sfumato.training.ema import EMA
from sfumato.training.latents import LatentCache
from sfumato.training.objectives import DiffusionObjective, TimestepBias, VAEObjective
from sfumato.training.text_pretrain import CaptionLabelObjective
from sfumato.training.trainer import (
    Objective,
    SampleCallback,
    StepContext,
    Trainer,
    TrainerConfig,
    latest_checkpoint,
)

__all__ = [
    "EMA",
    "CaptionLabelObjective",
    "CaptionOptions",
    "DatasetConfig",
    "DatasetPosition",
    "DiffusionObjective",
    "ImageItem",
    "KohyaDataset",
    "LatentCache",
    "Objective",
    "SampleCallback",
    "StepContext",
    "TimestepBias",
    "Trainer",
    "TrainerConfig",
    "VAEObjective",
    "latest_checkpoint",
    "make_bucket_resolutions",
    "scan_kohya_folder",
]
