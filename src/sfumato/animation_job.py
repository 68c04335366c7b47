"""gif2gif: every frame of an animation through img2img, as one job the CLI and the server both run.

Every frame gets the same settings and seed (so the style holds from frame to frame), is saved as it
is made, and the animation is written last with each frame's duration and the loop count (GIF, APNG,
WebP, or a video through PyAV). A frame that fails keeps its source picture in the animation, with a
note, so the others are never lost; a failure on the first frame means the settings themselves are
wrong and stops the job. Stopped midway, the animation holds the frames made so far.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from sfumato.app import Img2ImgJob, SavedImage, make_manager
from sfumato.errors import UserError
from sfumato.imaging.animation import save_animation
from sfumato.models.registry import ModelManager
from sfumato.request import Img2ImgRequest, validated
from sfumato.settings import Settings
from sfumato.tasks.common import Progress, resolve_seed
from sfumato.tasks.img2img_inputs import Img2ImgInputs


class Gif2GifJob:
    """An animation's frames through img2img; `run` has the interface of the other jobs."""

    task = "img2img"

    def __init__(
        self,
        settings: Settings,
        fields: dict[str, Any],
        frames: list[Image.Image],
        durations: list[int],
        loop: int,
        *,
        folder: Path,
        name: str,
        suffix: str = ".gif",
        manager: ModelManager | None = None,
        from_png: Path | None = None,
    ) -> None:
        if fields.get("batch_size", 1) != 1 or fields.get("n_iter", 1) != 1:
            raise UserError(
                "gif2gif makes one image per frame: leave batch size and batch count at 1", field="batch_size"
            )
        self.settings = settings
        self.fields = {**fields, "seed": resolve_seed(fields.get("seed", -1))}
        self.request = validated(Img2ImgRequest, self.fields)
        self.frames, self.durations, self.loop = frames, durations, loop
        self.folder, self.name, self.suffix = folder, name, suffix
        self.from_png = from_png
        self.manager = manager or make_manager(settings)
        self.interrupted = False
        self.animation: Path | None = None

    def run(
        self,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        should_skip: Callable[[], bool] = lambda: False,
        on_step: Callable[[Progress], None] = lambda progress: None,
        on_saved: Callable[[SavedImage], None] = lambda saved: None,
        already_saved: Callable[[int], bool] = lambda index: False,
    ) -> list[Path]:
        made: list[Image.Image] = []
        paths: list[Path] = []
        for index, frame in enumerate(self.frames):
            print(f"sfumato: frame {index + 1}/{len(self.frames)}", file=sys.stderr)

            def saved(image: SavedImage, index: int = index) -> None:
                made.append(image.image)
                on_saved(replace(image, index=index))

            def step(progress: Progress, index: int = index) -> None:
                on_step(replace(progress, image_index=index))

            resumed = already_saved(index)  # saved by an earlier run: made again, not saved again
            try:
                with tempfile.TemporaryDirectory() as scratch:
                    job = Img2ImgJob(
                        self.settings, self.fields, Img2ImgInputs(frame), from_png=self.from_png,
                        out_dir=Path(scratch) if resumed else self.folder, manager=self.manager,
                    )  # fmt: skip
                    done = job.run(
                        should_stop=should_stop,
                        should_skip=should_skip,
                        on_step=step,
                        on_saved=(lambda image: made.append(image.image)) if resumed else saved,
                    )
                    paths += [] if resumed else done
            except UserError as exc:
                if index == 0:
                    raise  # the settings themselves are wrong: every frame would fail the same way
                print(f"sfumato: error: frame {index + 1}: {exc}; its source frame is kept", file=sys.stderr)
                made.append(frame)
                continue
            if job.interrupted:
                self.interrupted = True
                break
        self.animation = save_animation(
            made, self.durations, self.loop, self.folder / f"{self.name}{self.suffix}"
        )
        return [*paths, self.animation]
