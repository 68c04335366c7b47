"""Jobs as the CLI (and later the API and UI) run them: settings -> model -> request -> images on disk.

This is the one place that turns user-facing inputs into a validated GenerationRequest, runs it on the
right model, and saves each image with its infotext as soon as it exists (so an interrupted batch keeps
what was made).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from sfumato import infotext, runtime
from sfumato.devices import pick_device, pick_dtype
from sfumato.errors import UserError
from sfumato.generation_params import infotext_params, request_fields_from_infotext, ti_hashes
from sfumato.models.loader import LoadedModel
from sfumato.models.registry import ModelManager
from sfumato.output import images_folder, save_png
from sfumato.pnginfo import read_metadata
from sfumato.prompts.embeddings import EmbeddingDatabase
from sfumato.prompts.encode import encoder_widths
from sfumato.request import GenerationRequest, Img2ImgRequest, validated
from sfumato.settings import Settings
from sfumato.tasks.common import Progress, RunControl
from sfumato.tasks.extras import check_upscaler
from sfumato.tasks.img2img import img2img
from sfumato.tasks.img2img_inputs import Img2ImgInputs
from sfumato.tasks.sd_upscale import SdUpscale, sd_upscale
from sfumato.tasks.txt2img import GeneratedImage, Txt2ImgResult, generate, resolve_sampler
from sfumato.upscalers.models import ImageModels


def request_from_png(path: Path, manager: ModelManager) -> dict[str, Any]:
    """Request fields from an image's infotext, with its model found by hash, then by name."""
    meta = read_metadata(path)
    if not meta.parameters:
        raise UserError(f"{path}: carries no A1111 generation parameters", field="from_png")
    parsed = infotext.parse(meta.parameters)
    fields = request_fields_from_infotext(parsed)
    for key in ("Model hash", "Model"):
        query = parsed.get(key)
        if not query:
            continue
        try:
            manager.checkpoint_path(str(query))
        except UserError:
            continue
        fields["model"] = str(query)
        break
    else:
        if parsed.get("Model hash") or parsed.get("Model"):
            wanted = f"{parsed.get('Model', '?')} [{parsed.get('Model hash', '?')}]"
            raise UserError(
                f"{path} was made with model {wanted}, which is not in your model folders; choose one with --model"
            )
    return fields


@dataclass(frozen=True)
class SavedImage:
    """An image a job has written, with what the caller needs to list or return it."""

    path: Path
    index: int
    seed: int
    subseed: int
    infotext: str
    image: Image.Image


def make_manager(settings: Settings) -> ModelManager:
    """The model manager for the configured device and dtype (one per process: it caches the model)."""
    runtime.configure(settings.threads)
    device = pick_device(settings.device)
    return ModelManager(settings, device=device, dtype=pick_dtype(device, settings.dtype))


class Txt2ImgJob:
    """A txt2img job from CLI-style fields (and optionally a PNG to start from).

    A server passes its long-lived `manager` so consecutive jobs reuse the loaded model. Subclasses
    (img2img) change the request kind, the output folder and the task that runs."""

    task = "txt2img"
    request_kind: type[GenerationRequest] = GenerationRequest

    def __init__(
        self,
        settings: Settings,
        fields: dict[str, Any],
        *,
        from_png: Path | None = None,
        out_dir: Path | None = None,
        manager: ModelManager | None = None,
    ) -> None:
        self.settings = settings
        self.manager = manager or make_manager(settings)
        given = {**(request_from_png(from_png, self.manager) if from_png else {}), **fields}
        recommended = self.manager.recommended_fields(given.get("model"))
        self.request = validated(self.request_kind, {**recommended, **given})
        resolve_sampler(self.request)  # fail on a bad sampler name before loading any model
        self.out_dir = out_dir
        self.interrupted = False
        self.upscalers = ImageModels(settings, "upscalers", self.manager.device)

    def run(
        self,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        should_skip: Callable[[], bool] = lambda: False,
        on_step: Callable[[Progress], None] = lambda progress: None,
        on_saved: Callable[[SavedImage], None] = lambda saved: None,
        already_saved: Callable[[int], bool] = lambda index: False,
    ) -> list[Path]:
        """Generate and save every image; `already_saved(index)` names images a crashed earlier run
        of this job saved, which are then not saved again (the rerun makes the same pixels)."""
        model = self.manager.load(self.request.model, self.request.vae, self.request.prediction)
        if self.request.sd_vae_decode_method == "TAESD":
            model.taesd = self.manager.taesd.get(model.family)  # a missing file fails before sampling
        folder = self.out_dir or images_folder(self.settings.outputs, self.task)
        saved: list[Path] = []

        def save(generated: GeneratedImage, result: Txt2ImgResult) -> None:
            if already_saved(generated.index):
                return
            text = self.infotext_for(
                model,
                generated.seed,
                generated.subseed,
                result.size or generated.image.size,
                result.used_embeddings,
                result.params,
            )
            path = save_png(generated.image, folder, generated.seed, text)
            saved.append(path)
            on_saved(
                SavedImage(path, generated.index, generated.seed, generated.subseed, text, generated.image)
            )

        planned = self.planned_steps()

        def step(progress: Progress) -> None:
            if planned is None and bar.n == 0 and progress.total:
                bar.total = progress.total * self.request.n_iter  # known once sampling starts
                bar.refresh()
            bar.update(1)
            on_step(progress)

        total = (planned or self.request.steps) * self.request.n_iter
        with tqdm(total=total, desc=self.task, unit="step", leave=False) as bar:
            control = RunControl(
                on_step=step, on_image=save, should_stop=should_stop, should_skip=should_skip
            )
            lookup, notes = self._embeddings_for(model)
            for note in notes:
                print(f"sfumato: {note}", file=sys.stderr)
            result = self._generate(model, control, lookup)
        for note in result.notes:
            print(f"sfumato: {note}", file=sys.stderr)
        self.interrupted = control.interrupted
        return saved

    def _generate(self, model: LoadedModel, control: RunControl, lookup: Callable) -> Txt2ImgResult:
        return generate(model, self.request, control, embedding_lookup=lookup, upscalers=self.upscalers)

    def planned_steps(self) -> int | None:
        """Sampler steps per image for the progress bar (None: known only once sampling starts)."""
        request = self.request
        hires = (request.hr_second_pass_steps or request.steps) if request.enable_hr else 0
        return request.steps + hires

    def _embeddings_for(self, model: LoadedModel) -> tuple[Callable, list[str]]:
        """Token lookup for the user's embeddings that fit this model, and a note for each embedding the
        prompts name that does not fit (it then stays a plain word, as in A1111)."""
        database = EmbeddingDatabase.load(self.settings.model_dirs("embeddings"), self.manager.hashes)
        widths = encoder_widths(model)
        unusable = set(database.embeddings) - set(database.usable(widths))
        words = set(re.findall(r"[\w.-]+", f"{self.request.prompt} {self.request.negative_prompt}".lower()))
        notes = [
            f"embedding {name!r} not used: its vectors are {database.embeddings[name].shape} wide, this "
            f"model's text encoders take {' + '.join(str(w) for _, w in widths)}"
            for name in sorted(unusable)
            if name.lower() in words
        ]
        return (lambda tokenizer: database.lookup_table(tokenizer, widths).find_embedding_at_position), notes

    def infotext_for(
        self,
        model: LoadedModel,
        seed: int,
        subseed: int,
        size: tuple[int, int],
        embeddings: dict | None = None,
        params: dict[str, Any] | None = None,
    ) -> str:
        request = self.request
        sampler, schedule = resolve_sampler(request)
        fields = {**request.model_dump(), "sampler_name": sampler, "scheduler": schedule}
        vae_path = model.vae_path
        params = infotext_params(
            fields,
            seed=seed,
            subseed=subseed,
            width=size[0],
            height=size[1],
            model_name=model.name,
            model_hash=self.manager.model_hash(model.path),
            vae_name=vae_path.name if vae_path else None,
            vae_hash=self.manager.model_hash(vae_path) if vae_path else None,
            extra={**(params or {}), "TI hashes": ti_hashes(embeddings or {})},
        )
        return infotext.format(request.prompt, request.negative_prompt, params)


class Img2ImgJob(Txt2ImgJob):
    """An img2img / inpainting job: `inputs` holds the init image and mask."""

    task = "img2img"
    request_kind = Img2ImgRequest

    def __init__(self, settings: Settings, fields: dict[str, Any], inputs: Img2ImgInputs, **options: Any):
        super().__init__(settings, fields, **options)
        self.inputs = inputs

    def _generate(self, model: LoadedModel, control: RunControl, lookup: Callable) -> Txt2ImgResult:
        assert isinstance(self.request, Img2ImgRequest)
        return img2img(model, self.request, self.inputs, control, embedding_lookup=lookup)

    def planned_steps(self) -> int | None:
        return None  # A1111's img2img rule depends on the sampler: read off the first step


class SdUpscaleJob(Img2ImgJob):
    """A1111's SD upscale script: the init image upscaled, then redrawn tile by tile (`tasks.sd_upscale`)."""

    def __init__(
        self, settings: Settings, fields: dict[str, Any], inputs: Img2ImgInputs, options: SdUpscale, **kw: Any
    ):
        if inputs.mask is not None:
            raise UserError("SD upscale redraws the whole picture: it takes no mask", field="mask")
        super().__init__(settings, fields, inputs, **kw)
        check_upscaler(options.upscaler, self.upscalers, "upscaler")
        self.options = options

    def _generate(self, model: LoadedModel, control: RunControl, lookup: Callable) -> Txt2ImgResult:
        assert isinstance(self.request, Img2ImgRequest)
        return sd_upscale(
            model,
            self.request,
            self.inputs.image,
            self.options,
            control,
            models=self.upscalers,
            embedding_lookup=lookup,
        )
