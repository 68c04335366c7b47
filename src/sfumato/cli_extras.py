"""`sfumato upscale` and `sfumato clean`: the Extras tab's jobs, written to outputs/extras-images
with A1111's postprocessing infotext keys."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from sfumato.errors import UserError
from sfumato.imaging.files import read_image
from sfumato.settings import Settings


def add_extras_parsers(sub: argparse._SubParsersAction, add_common) -> None:
    up = sub.add_parser("upscale", help="resize an image with an upscaler (the Extras tab)")
    up.add_argument("image", type=Path)
    up.add_argument(
        "--upscaler", default="Lanczos", help="Lanczos, Nearest, None, or a model in models/ESRGAN by name"
    )
    up.add_argument("--scale", type=float, default=2.0, help="factor (default 2)")
    up.add_argument("--width", type=int, help="resize to this size instead (with --height)")
    up.add_argument("--height", type=int)
    up.add_argument("--tile", type=int, default=192, help="model upscalers: tile side in pixels (0: whole)")
    up.add_argument("--tile-overlap", type=int, default=16, help="model upscalers: context around a tile")
    up.add_argument("--out", type=Path, help="folder (default outputs/extras-images/DATE)")
    add_common(up)
    up.set_defaults(handler=cmd_upscale)

    clean = sub.add_parser("clean", help="remove what the mask covers, painted from its surroundings")
    clean.add_argument("image", type=Path)
    clean.add_argument("--mask", type=Path, required=True, help="white = remove")
    clean.add_argument(
        "--method",
        default="telea",
        help="telea (default), ns (Navier-Stokes), sd (inpaint with a checkpoint), or a model in "
        "models/inpaint (LaMa) by name",
    )
    clean.add_argument("--radius", type=int, default=3, help="telea/ns: neighbourhood radius in pixels")
    sd = clean.add_argument_group("--method sd", "img2img inpainting over a Telea fill")
    sd.add_argument("--prompt", default="", help="what should be there instead (default: nothing said)")
    sd.add_argument("--negative", default="", help="negative prompt")
    sd.add_argument("--model", help="checkpoint (default: the default model)")
    sd.add_argument("--strength", type=float, default=0.75, help="denoising strength (default 0.75)")
    sd.add_argument("--steps", type=int, default=20)
    sd.add_argument("--seed", type=int, default=-1)
    clean.add_argument("--out", type=Path, help="folder (default outputs/extras-images/DATE)")
    add_common(clean)
    clean.set_defaults(handler=cmd_clean)


def _settings(args: argparse.Namespace) -> Settings:
    from sfumato.settings import load_settings

    return load_settings({"data_dir": args.data_dir}, settings_file=args.settings)


def _save(args: argparse.Namespace, image: Image.Image, parameters: str) -> int:
    from sfumato.output import images_folder, save_png

    folder = args.out or images_folder(_settings(args).outputs, "extras")
    print(save_png(image, folder, None, parameters), flush=True)
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from sfumato.devices import pick_device
    from sfumato.tasks.extras import ResizeTarget, Tiling, upscale
    from sfumato.upscalers.models import ImageModels

    if (args.width is None) != (args.height is None):
        raise UserError("--width and --height go together", field="width")
    if args.scale <= 0 or (args.width is not None and min(args.width, args.height) < 1):
        raise UserError("--scale, --width and --height must be positive", field="scale")
    if args.tile < 0 or args.tile_overlap < 0:
        raise UserError("--tile and --tile-overlap must be 0 or more", field="tile")
    image = read_image(args.image, "image")
    settings = _settings(args)
    models = ImageModels(settings, "upscalers", pick_device(settings.device))
    target = ResizeTarget(scale=args.scale, width=args.width, height=args.height)
    tiling = Tiling(args.tile, args.tile_overlap)
    result = upscale(image, target, upscaler_1=args.upscaler, models=models, tiling=tiling)
    size = f"{args.width}x{args.height}" if args.width else None
    parameters = ", ".join(
        f"{key}: {value}"
        for key, value in (
            ("Postprocess upscale by", None if size else f"{args.scale:g}"),
            ("Postprocess upscale to", size),
            ("Postprocess upscaler", args.upscaler),
        )
        if value is not None
    )
    return _save(args, result, parameters)


def cmd_clean(args: argparse.Namespace) -> int:
    from sfumato.devices import pick_device
    from sfumato.tasks.clean import SD_METHOD, clean_image
    from sfumato.upscalers.models import ImageModels

    image = read_image(args.image, "image")
    mask = read_image(args.mask, "mask")
    if args.method == SD_METHOD:
        return _clean_with_checkpoint(args, image, mask)
    settings = _settings(args)
    models = ImageModels(settings, "inpaint", pick_device(settings.device))
    result, notes = clean_image(image, mask, method=args.method, radius=args.radius, models=models)
    for note in notes:
        print(f"sfumato: {note}", file=sys.stderr)
    radius = f", Clean radius: {args.radius}" if args.method in ("telea", "ns") else ""
    return _save(args, result, f"Clean method: {args.method}{radius}")


def _clean_with_checkpoint(args: argparse.Namespace, image: Image.Image, mask: Image.Image) -> int:
    """Telea's fill as the starting picture, then A1111-style inpainting of the masked area only
    ("original" masked content: the fill is what the sampler starts from)."""
    from sfumato.app import Img2ImgJob
    from sfumato.cli import _run_job
    from sfumato.output import images_folder
    from sfumato.tasks.clean import clean_image, fit_mask
    from sfumato.tasks.img2img_inputs import Img2ImgInputs

    mask, notes = fit_mask(mask, image.size)
    filled, _ = clean_image(image, mask, method="telea", radius=args.radius)
    for note in notes:
        print(f"sfumato: {note}", file=sys.stderr)
    fields = {
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "model": args.model,
        "denoising_strength": args.strength,
        "steps": args.steps,
        "seed": args.seed,
        "inpainting_fill": 1,
        "inpaint_full_res": True,
        "inpaint_full_res_padding": 32,
        "mask_blur": 4,
    }
    settings = _settings(args)
    folder = args.out or images_folder(settings.outputs, "extras")
    return _run_job(Img2ImgJob(settings, fields, Img2ImgInputs(filled, mask), out_dir=folder))
