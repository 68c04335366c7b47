"""`sfumato img2img` (img2img, inpainting and outpainting from files or whole folders) and
`sfumato gif2gif` (every frame of an animation through img2img).

Defaults are A1111's web UI's (masked content "original", inpaint area "whole picture", padding 32),
not its API's. `--init DIR` runs every image in the folder, with the mask of the same name from
`--mask DIR`; one image that cannot be read is reported and the others still run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sfumato.errors import UserError
from sfumato.imaging.files import read_image
from sfumato.imaging.outpaint import OUTPAINT_FILLS, Margins, extend_canvas

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif")
RESIZE_MODES = {"just-resize": 0, "crop-and-resize": 1, "resize-and-fill": 2, "latent-upscale": 3}
MASKED_CONTENT = {"fill": 0, "original": 1, "latent-noise": 2, "latent-nothing": 3}
SIDES = ("left", "right", "up", "down")

IMG2IMG_FLAG_FIELDS = {
    "strength": "denoising_strength",
    "noise_multiplier": "initial_noise_multiplier",
    "mask_blur": "mask_blur",
    "padding": "inpaint_full_res_padding",
    "mask_weight": "inpainting_mask_weight",
    "image_cfg": "image_cfg_scale",
}


def _strength_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strength", type=float, help="denoising strength 0..1 (default 0.75)")
    p.add_argument("--resize-mode", choices=list(RESIZE_MODES), default="just-resize")
    p.add_argument("--noise-multiplier", type=float, help="initial noise multiplier (default 1)")
    p.add_argument("--image-cfg", type=float, help="instruct-pix2pix models: image CFG scale (default 1.5)")


def add_gif2gif_parser(sub: argparse._SubParsersAction, generation_args: Callable) -> None:
    p = sub.add_parser(
        "gif2gif", help="run every frame of an animated GIF/APNG/WebP or video through img2img"
    )
    p.add_argument("animation", type=Path, help="the animation (GIF, APNG, WebP; MP4/MOV/WebM/MKV with PyAV)")
    generation_args(p, "img2img")
    _strength_args(p)


def add_img2img_parser(sub: argparse._SubParsersAction, generation_args: Callable) -> None:
    p = sub.add_parser("img2img", help="repaint an image: img2img, inpainting (--mask), outpainting")
    generation_args(p, "img2img")
    p.add_argument("--init", type=Path, required=True, help="the init image, or a folder of them")
    _strength_args(p)
    inpaint = p.add_argument_group("inpainting")
    inpaint.add_argument(
        "--mask", type=Path, help="white = repaint (or a folder of masks named like the images)"
    )
    inpaint.add_argument("--mask-blur", type=int, help="mask blur in pixels (default 4)")
    inpaint.add_argument("--invert-mask", action="store_true", help="repaint what is not masked")
    inpaint.add_argument("--masked-content", choices=list(MASKED_CONTENT), default="original")
    inpaint.add_argument(
        "--inpaint-area",
        choices=["whole", "masked"],
        default="whole",
        help='"masked": paint only the padded box around the mask, at full size',
    )
    inpaint.add_argument(
        "--padding", type=int, default=32, help="padding of the box for --inpaint-area masked"
    )
    inpaint.add_argument("--mask-weight", type=float, help="inpainting models: conditioning mask strength")
    outpaint = p.add_argument_group("outpainting")
    outpaint.add_argument("--outpaint", type=int, metavar="PIXELS", help="extend the canvas by this much")
    outpaint.add_argument(
        "--outpaint-sides", default="left,right,up,down", help="comma-separated: left, right, up, down"
    )
    outpaint.add_argument("--outpaint-fill", choices=list(OUTPAINT_FILLS), default="edge")
    outpaint.add_argument("--outpaint-colour", default="#808080", help="for --outpaint-fill colour")
    sd_up = p.add_argument_group("SD upscale", "upscale, then redraw in tiles of --width x --height")
    sd_up.add_argument("--sd-upscale", type=float, metavar="SCALE", help="turn it on: upscale by SCALE")
    sd_up.add_argument("--sd-upscale-upscaler", default="Lanczos", help="Lanczos, Nearest, None or a model")
    sd_up.add_argument("--sd-upscale-overlap", type=int, default=64, help="tile overlap in pixels")


def img2img_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {field: getattr(args, flag, None) for flag, field in IMG2IMG_FLAG_FIELDS.items()}
    fields = {k: v for k, v in fields.items() if v is not None}
    fields["resize_mode"] = RESIZE_MODES[args.resize_mode]
    if not hasattr(args, "masked_content"):
        return fields
    return {
        **fields,
        "inpainting_fill": MASKED_CONTENT[args.masked_content],
        "inpaint_full_res": args.inpaint_area == "masked",
        "inpainting_mask_invert": int(args.invert_mask),
    }


def _margins(args: argparse.Namespace) -> Margins | None:
    if args.outpaint is None:
        return None
    sides = {s.strip() for s in args.outpaint_sides.split(",") if s.strip()}
    if not sides or sides - set(SIDES):
        raise UserError(f"--outpaint-sides takes {', '.join(SIDES)}, not {args.outpaint_sides!r}")
    if args.outpaint < 1:
        raise UserError("--outpaint must be at least 1 pixel", field="outpaint")
    n = args.outpaint
    return Margins(
        left=n * ("left" in sides),
        top=n * ("up" in sides),
        right=n * ("right" in sides),
        bottom=n * ("down" in sides),
    )


def init_files(args: argparse.Namespace) -> list[tuple[Path, Path | None]]:
    """(init image, its mask) pairs: one file, or every image of a folder with its namesake mask."""
    if args.init.is_dir():
        images = sorted(p for p in args.init.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"--init: no images in {args.init}", field="init")
    else:
        images = [args.init]
    if args.mask is None or not args.mask.is_dir():
        return [(image, args.mask) for image in images]
    masks = {p.stem: p for p in args.mask.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    return [(image, masks.get(image.stem, args.mask / f"{image.stem}.png")) for image in images]


def load_inputs(args: argparse.Namespace, image_path: Path, mask_path: Path | None, seed: int):
    """The job's `Img2ImgInputs`; with --outpaint the extended canvas and its margin mask."""
    from sfumato.tasks.img2img_inputs import Img2ImgInputs

    image = read_image(image_path, "init")
    mask = read_image(mask_path, "mask") if mask_path is not None else None
    margins = _margins(args)
    if margins is None:
        return Img2ImgInputs(image, mask)
    if mask is not None:
        raise UserError("--outpaint paints the new margins: it cannot take --mask too", field="mask")
    canvas, margin_mask = extend_canvas(image, margins, args.outpaint_fill, args.outpaint_colour, seed)
    return Img2ImgInputs(canvas, margin_mask)


def cmd_img2img(args: argparse.Namespace, base_fields: dict[str, Any], run: Callable) -> int:
    """Run every init image; returns the exit code (2 when any image failed, after the others ran)."""
    fields = {**base_fields, **img2img_fields(args)}
    if args.from_png is None and "prompt" not in fields:
        fields["prompt"] = ""  # img2img without a prompt is a common first try: allowed, as in A1111
    make_job = _job_maker(args)
    pairs = init_files(args)
    manager = None
    failed = 0
    for image_path, mask_path in pairs:
        try:
            inputs = load_inputs(args, image_path, mask_path, fields.get("seed", 0) or 0)
            job = make_job(
                args.settings_obj, fields, inputs, from_png=args.from_png, out_dir=args.out, manager=manager
            )
        except UserError as exc:
            if len(pairs) == 1:
                raise
            print(f"sfumato: error: {image_path.name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        manager = job.manager
        code = run(job)
        if code != 0:
            return code
    return 2 if failed else 0


def _job_maker(args: argparse.Namespace) -> Callable:
    """Img2ImgJob, or with --sd-upscale the SD upscale script's job."""
    from functools import partial

    from sfumato.app import Img2ImgJob, SdUpscaleJob
    from sfumato.tasks.sd_upscale import SdUpscale

    if args.sd_upscale is None:
        return Img2ImgJob
    if not 1 <= args.sd_upscale <= 8:
        raise UserError("--sd-upscale: the scale must be from 1 to 8", field="scale")
    if args.outpaint:
        raise UserError("--sd-upscale and --outpaint do not go together", field="sd_upscale")
    options = SdUpscale(args.sd_upscale_upscaler, args.sd_upscale, args.sd_upscale_overlap)
    return partial(SdUpscaleJob, options=options)


def cmd_gif2gif(args: argparse.Namespace, base_fields: dict[str, Any], run: Callable) -> int:
    """`animation_job.Gif2GifJob` on a file, into outputs/img2img-images/DATE/gif2gif-NNNNN-NAME/."""
    from sfumato.animation_job import Gif2GifJob
    from sfumato.imaging.files import read_frames
    from sfumato.output import images_folder, next_sequence_number

    fields = {**base_fields, **img2img_fields(args)}
    frames, durations, loop = read_frames(args.animation, "animation")
    parent = args.out or images_folder(args.settings_obj.outputs, "img2img")
    folder = parent / f"gif2gif-{next_sequence_number(parent):05d}-{args.animation.stem}"
    job = Gif2GifJob(
        args.settings_obj, fields, frames, durations, loop, folder=folder, name=args.animation.stem,
        suffix=args.animation.suffix, from_png=args.from_png,
    )  # fmt: skip
    code = run(job, lambda saved: None)
    if job.animation is not None:  # also when stopped midway: the frames made so far
        print(job.animation, flush=True)
    return code
