"""The generic training loop: one `Trainer` for every objective (default model, VAE, LoRA, TI, ...).

accelerate provides devices, DDP, mixed precision (autocast + fp16 loss scaling) and gradient
accumulation; torch the AdamW optimizer; diffusers the LR schedules. What is written here is the glue
those do not provide together: a checkpoint that makes kill-and-resume bit-identical, sampling that cannot
disturb training, and the logs.

How resume stays bit-identical (tested on CPU): nothing random depends on how long the process has run.
- The objective's noise, timesteps and VAE samples come from `StepContext.generator`, a CPU generator
  seeded from (seed, process, step, micro-batch), never from a stream carried across steps.
- The dataset is a pure function of (seed, epoch, batch), so its position is two integers.
- The checkpoint holds the trained weights, optimizer, LR scheduler, loss scaler, EMA, step, dataset
  position and the global RNG states (python, numpy, torch, cuda) of every process, and is written
  to a temporary folder and renamed, so a kill while saving leaves the previous checkpoint intact.
- Sampling callbacks run with the global RNG states saved and restored around them, in eval mode and
  no-grad, with the EMA weights swapped in and out exactly; the DataLoader gets its own generator so
  starting an epoch mid-way draws nothing from the global RNG.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from sfumato.training.dataset import DatasetPosition, EpochBatches, KohyaDataset, batches_per_epoch
from sfumato.training.ema import EMA

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
LOG_FILE = "log.csv"


@dataclass(frozen=True)
class StepContext:
    """What an objective's `loss` learns about the step: the optimizer step (0-based), the micro-batch
    within it (gradient accumulation), and the CPU generator it must draw all its randomness from."""

    step: int
    micro_step: int
    generator: torch.Generator


class Objective(Protocol):
    """What the trainer needs from a kind of training (see the package docstring)."""

    def modules(self) -> dict[str, nn.Module]:
        """Every network the loss uses, trained or frozen: moved to the device, put in train/eval mode,
        given gradient checkpointing if trained, and handed to the sampling callback."""
        ...

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters the optimizer and EMA update; every other parameter of `modules` is frozen."""
        ...

    def loss(self, batch: Mapping[str, Any], step: StepContext) -> Tensor:
        """The scalar loss of one micro-batch."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """The trained weights, in the layout the final model file should have."""
        ...

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None: ...


SampleCallback = Callable[[int, dict[str, nn.Module]], None]


@dataclass(frozen=True)
class TrainerConfig:
    """Everything about a run except the data and the objective. `max_steps` counts optimizer steps.

    `ema_decay=None` disables EMA; with EMA the final model holds the EMA weights unless `save_ema`
    is False. `save_every` / `sample_every` of 0 disable periodic saving / sampling (the end is always
    saved). `mixed_precision` is accelerate's: "no", "fp16" or "bf16".
    """

    output_dir: Path
    max_steps: int
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    ema_decay: float | None = None
    ema_warmup: bool = True
    save_ema: bool = True
    sample_with_ema: bool = True
    save_every: int = 0
    sample_every: int = 0
    seed: int = 0
    num_workers: int = 0
    cpu: bool = False
    progress_bar: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("max_steps and gradient_accumulation_steps must be at least 1")
        if self.save_every < 0 or self.sample_every < 0 or self.lr_warmup_steps < 0:
            raise ValueError("save_every, sample_every and lr_warmup_steps cannot be negative")


def step_seed(seed: int, process: int, step: int, micro_step: int) -> int:
    """A 63-bit seed for one micro-batch, well mixed (numpy's SeedSequence) from its coordinates."""
    return int(np.random.SeedSequence([seed, process, step, micro_step]).generate_state(1, np.uint64)[0] >> 1)


def _rng_state() -> dict[str, Any]:
    """The global RNG states, in types `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)},
        "numpy_gauss": (int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    has_gauss, cached = state["numpy_gauss"]
    np.random.set_state(
        (numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], has_gauss, cached)
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (e.g. sampling) without it changing any global RNG state."""
    state = _rng_state()
    try:
        yield
    finally:
        _set_rng_state(state)


def enable_gradient_checkpointing(module: nn.Module) -> bool:
    """Turn on activation checkpointing where the module supports it (diffusers or transformers)."""
    if getattr(module, "_supports_gradient_checkpointing", False) and hasattr(
        module, "enable_gradient_checkpointing"
    ):
        module.enable_gradient_checkpointing()
        return True
    if getattr(module, "supports_gradient_checkpointing", False):
        module.gradient_checkpointing_enable()
        return True
    return False


class _LossModule(nn.Module):
    """The objective as one `nn.Module`, so `accelerator.prepare` can wrap it (DDP gradient sync,
    autocast) while the objective keeps calling its own networks, whose parameters this registers."""

    def __init__(self, objective: Objective, parameters: list[nn.Parameter]) -> None:
        super().__init__()
        self.objective = objective
        self.trained = nn.ParameterList(parameters)

    def forward(self, batch: Mapping[str, Any], step: StepContext) -> Tensor:
        return self.objective.loss(batch, step)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, if any."""
    folders = sorted((Path(output_dir) / "checkpoints").glob("step-*[0-9]"))
    return folders[-1] if folders else None


class Trainer:
    """Runs an `Objective` over a `KohyaDataset` for `config.max_steps` optimizer steps."""

    def __init__(
        self,
        objective: Objective,
        dataset: KohyaDataset,
        config: TrainerConfig,
        on_sample: SampleCallback | None = None,
    ) -> None:
        self.objective = objective
        self.dataset = dataset
        self.config = config
        self.on_sample = on_sample
        self.output_dir = Path(config.output_dir)
        # accelerate keeps one process-wide state and refuses a second Accelerator with another mixed
        # precision; a recipe that trains its stages in turn (the default model's: a bf16 VAE, then fp32
        # networks) needs each stage's own. Only that state is reset: the distributed one is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            cpu=config.cpu,
        )
        self.step = 0
        self.position = DatasetPosition()
        self.seconds = 0.0
        self.batches_per_epoch = batches_per_epoch(dataset, self.accelerator.num_processes)

        self.parameters = list(objective.trainable_parameters())
        if not self.parameters:
            raise ValueError("the objective has no trainable parameters")
        trained_ids = {id(p) for p in self.parameters}
        self._trained_modules: list[nn.Module] = []
        for module in objective.modules().values():
            module.to(self.accelerator.device)
            trains = False
            for parameter in module.parameters():
                parameter.requires_grad_(id(parameter) in trained_ids)
                trains = trains or id(parameter) in trained_ids
            if trains:
                self._trained_modules.append(module)
                if config.gradient_checkpointing:
                    enable_gradient_checkpointing(module)
        for parameter in self.parameters:
            parameter.requires_grad_(True)

        optimizer = torch.optim.AdamW(
            self.parameters,
            lr=config.learning_rate,
            betas=config.adam_betas,
            eps=config.adam_epsilon,
            weight_decay=config.weight_decay,
        )
        self.model, self.optimizer = self.accelerator.prepare(
            _LossModule(objective, self.parameters), optimizer
        )
        # Stepped by hand once per optimizer step (accelerate would step it once per process).
        self.lr_scheduler = get_scheduler(
            "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler,
            self.optimizer.optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=config.max_steps,
        )
        self.ema = EMA(self.parameters, config.ema_decay, config.ema_warmup) if config.ema_decay else None

    # -- checkpoints -------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write the complete training state at the current step; return its folder."""
        folder = self.output_dir / "checkpoints" / f"step-{self.step:06d}"
        partial = folder.with_name(folder.name + ".partial")
        accelerator = self.accelerator
        if accelerator.is_main_process:  # a save killed half way may have left a partial folder
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(_rng_state(), partial / f"rng-{accelerator.process_index}.pt")
        if accelerator.is_main_process:
            save_file(
                {k: v.contiguous() for k, v in self.objective.state_dict().items()}, partial / MODEL_FILE
            )
            if self.ema is not None:
                save_file(self.ema.state_dict(), partial / EMA_FILE)
            state = {
                "step": self.step,
                "position": asdict(self.position),
                "seconds": self.seconds,
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            }
            torch.save(state, partial / STATE_FILE)
            config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()}
            (partial / "trainer.json").write_text(json.dumps(config, indent=2) + "\n")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)  # a run restarted in the same folder
            partial.replace(folder)
        accelerator.wait_for_everyone()
        return folder

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore everything `save_checkpoint` wrote, so training continues as if never stopped."""
        folder = Path(folder)
        state = torch.load(folder / STATE_FILE, weights_only=True)
        self.objective.load_state_dict(load_file(folder / MODEL_FILE))
        if self.ema is not None:
            self.ema.load_state_dict(load_file(folder / EMA_FILE, device=str(self.accelerator.device)))
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.position = DatasetPosition(**state["position"])
        self.seconds = state["seconds"]
        _set_rng_state(torch.load(folder / f"rng-{self.accelerator.process_index}.pt", weights_only=True))

    def save_model(self, path: str | Path | None = None) -> Path:
        """Write the trained weights (the EMA ones if EMA is on and `save_ema`) as safetensors."""
        path = Path(path) if path is not None else self.output_dir / MODEL_FILE
        if self.accelerator.is_main_process:
            with self._ema_weights(self.config.save_ema):
                save_file({k: v.contiguous() for k, v in self.objective.state_dict().items()}, path)
        self.accelerator.wait_for_everyone()
        return path

    # -- the loop ----------------------------------------------------------------------------------

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Batches from `self.position` on, forever, advancing the position as each one is taken."""
        while True:
            epoch = self.position.epoch
            batches = EpochBatches(
                self.dataset,
                epoch,
                self.position.batch,
                self.accelerator.process_index,
                self.accelerator.num_processes,
            )
            loader = torch.utils.data.DataLoader(
                batches,
                batch_size=None,
                shuffle=False,
                num_workers=self.config.num_workers,
                generator=torch.Generator().manual_seed(self.config.seed),
            )
            for batch in loader:
                following = self.position.batch + 1
                if following == self.batches_per_epoch:
                    self.position = DatasetPosition(epoch + 1, 0)
                else:
                    self.position = DatasetPosition(epoch, following)
                yield batch

    @contextmanager
    def _ema_weights(self, wanted: bool) -> Iterator[None]:
        if wanted and self.ema is not None:
            with self.ema.swapped():
                yield
        else:
            yield

    def _train_step(self, batches: Iterator[dict[str, Any]]) -> float:
        """One optimizer step over `gradient_accumulation_steps` micro-batches; returns the mean loss."""
        accelerator = self.accelerator
        total = torch.zeros((), device=accelerator.device)
        for micro in range(self.config.gradient_accumulation_steps):
            seed = step_seed(self.config.seed, accelerator.process_index, self.step, micro)
            context = StepContext(self.step, micro, torch.Generator().manual_seed(seed))
            with accelerator.accumulate(self.model):
                loss = self.model(next(batches), context)
                accelerator.backward(loss)
                if accelerator.sync_gradients and self.config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            total += loss.detach().float()
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        mean = accelerator.reduce(total, "mean") / self.config.gradient_accumulation_steps
        return float(mean)

    def _sample(self) -> None:
        modules = self.objective.modules()
        with preserved_rng(), torch.no_grad(), self._ema_weights(self.config.sample_with_ema):
            for module in self._trained_modules:
                module.eval()
            try:
                assert self.on_sample is not None
                self.on_sample(self.step, modules)
            finally:
                for module in self._trained_modules:
                    module.train()

    def _open_log(self) -> tuple[Any, Any]:
        """The CSV log (rows after the current step, left by a killed run, are dropped) and, when
        `torch.utils.tensorboard` imports, a TensorBoard writer."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / LOG_FILE
        rows: list[list[str]] = []
        if path.exists():
            with path.open(newline="") as handle:
                rows = [row for row in list(csv.reader(handle))[1:] if int(row[0]) <= self.step]
        handle = path.open("w", newline="")
        writer = csv.writer(handle)
        writer.writerow(["step", "loss", "lr", "seconds"])
        writer.writerows(rows)
        tensorboard = None
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed; logging to %s only", path)
            else:
                tensorboard = SummaryWriter(str(self.output_dir / "tensorboard"))
        return (handle, writer), tensorboard

    def train(self, resume_from: str | Path | None = None) -> Path:
        """Train to `max_steps` (after restoring `resume_from`, a checkpoint folder, if given), save the
        last checkpoint and the final model; return the model file's path."""
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        for module in self.objective.modules().values():
            module.train(any(module is trained for trained in self._trained_modules))
        main = self.accelerator.is_main_process
        (log_handle, log), tensorboard = self._open_log() if main else ((None, None), None)
        progress = tqdm(
            total=self.config.max_steps,
            initial=self.step,
            disable=not (main and self.config.progress_bar),
            desc="training",
        )
        batches = self._batches()
        started, seconds_before = time.perf_counter(), self.seconds
        saved_at = self.step if resume_from is not None else None
        try:
            while self.step < self.config.max_steps:
                lr = self.lr_scheduler.get_last_lr()[0]
                loss = self._train_step(batches)
                self.seconds = seconds_before + time.perf_counter() - started
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if main:
                    log.writerow([self.step, f"{loss:.6g}", f"{lr:.6g}", f"{self.seconds:.3f}"])
                    log_handle.flush()
                    if tensorboard is not None:
                        tensorboard.add_scalar("loss", loss, self.step)
                        tensorboard.add_scalar("lr", lr, self.step)
                if (
                    self.on_sample is not None
                    and self.config.sample_every
                    and self.step % self.config.sample_every == 0
                ):
                    self._sample()
                if self.config.save_every and self.step % self.config.save_every == 0:
                    self.save_checkpoint()
                    saved_at = self.step
            if saved_at != self.step:
                self.save_checkpoint()
            return self.save_model()
        finally:
            progress.close()
            if log_handle is not None:
                log_handle.close()
            if tensorboard is not None:
                tensorboard.close()
