"""The `sfumato` command line: txt2img, img2img, png-info, models list, serve.

User errors print one line on stderr and exit 2; Ctrl-C during sampling stops after the current step,
saves what was made (as A1111 does) and exits 130; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sfumato import __version__
from sfumato.cli_extras import add_extras_parsers
from sfumato.cli_images import add_gif2gif_parser, add_img2img_parser
from sfumato.cli_tools import add_tools_parsers
from sfumato.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, help="folder with models/, embeddings/, outputs/ (default: .)"
    )
    parser.add_argument("--settings", type=Path, help="settings JSON file (default: <data-dir>/sfumato.json)")


def _add_low_memory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--low-memory",
        action="store_const",
        const=True,
        help="keep weights in RAM as the checkpoint stores them and bring each layer to the compute "
        "precision and device for its own forward only: about half the RAM on a CPU, one layer's "
        "weights on a GPU; same pixels, a little slower",
    )


def _compute(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a generation command's flags decide: device, dtype, low-memory mode."""
    return {"device": args.device, "dtype": args.dtype, "low_memory": args.low_memory}


def _list_command(
    sub: argparse._SubParsersAction, name: str, help_: str, list_help: str, handler: Callable
) -> None:
    """`sfumato NAME list [--json]`."""
    group = sub.add_parser(name, help=help_).add_subparsers(dest=f"{name}_command", required=True)
    listing = group.add_parser("list", help=list_help)
    listing.add_argument("--json", action="store_true")
    _add_common(listing)
    listing.set_defaults(handler=handler)


def _txt2img_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("txt2img", help="generate images from a prompt")
    _generation_args(p, "txt2img")
    hires = p.add_argument_group("hires fix", "a second pass at a larger size")
    hires.add_argument("--hires", action="store_const", const=True, help="turn the hires fix on")
    hires.add_argument("--hires-scale", type=float, help="upscale by (default 2)")
    hires.add_argument("--hires-width", type=int, help="resize to this width instead (0: from the height)")
    hires.add_argument("--hires-height", type=int, help="resize to this height instead")
    hires.add_argument(
        "--hires-upscaler",
        help="Latent (default), Latent (bicubic), ..., Lanczos, Nearest, or a model in models/ESRGAN",
    )
    hires.add_argument("--hires-steps", type=int, help="second-pass steps (default: as the first pass)")
    hires.add_argument("--hires-sampler", help="second-pass sampler (default: the same)")
    hires.add_argument("--hires-prompt", help="second-pass prompt (default: the same)")
    hires.add_argument("--hires-negative", help="second-pass negative prompt (default: the same)")
    hires.add_argument("--strength", type=float, help="second-pass denoising strength (default 0.75)")
    hires.add_argument(
        "--hires-token-merging-ratio",
        type=float,
        metavar="RATIO",
        help="second-pass token merging ratio (default: the first pass's)",
    )
    p.set_defaults(handler=cmd_txt2img)


HIRES_FLAG_FIELDS = {
    "hires": "enable_hr",
    "hires_scale": "hr_scale",
    "hires_width": "hr_resize_x",
    "hires_height": "hr_resize_y",
    "hires_upscaler": "hr_upscaler",
    "hires_steps": "hr_second_pass_steps",
    "hires_sampler": "hr_sampler_name",
    "hires_prompt": "hr_prompt",
    "hires_negative": "hr_negative_prompt",
    "strength": "denoising_strength",
    "hires_token_merging_ratio": "token_merging_ratio_hr",
}


def _generation_args(p: argparse.ArgumentParser, task: str) -> None:
    """The options txt2img and img2img share (A1111's generation settings)."""
    p.add_argument("prompt", nargs="?", help="the prompt (A1111 syntax)")
    p.add_argument("--negative", help="negative prompt")
    p.add_argument("--model", help="checkpoint name, title, hash or path")
    p.add_argument("--vae", help='VAE name or path; "Automatic" (default) or "None" for the baked-in one')
    p.add_argument("--sampler", help="sampler name as in A1111 (default DPM++ 2M)")
    p.add_argument("--scheduler", help="schedule type as in A1111 (default Automatic)")
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float, help="CFG scale (default: what the model recommends, else 7)")
    p.add_argument("--eta", type=float, help="noise multiplier for ancestral/SDE samplers and DDIM")
    p.add_argument("--seed", type=int, help="-1 for random")
    p.add_argument("--subseed", type=int, help="variation seed")
    p.add_argument("--subseed-strength", type=float, help="variation strength 0..1")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--batch-count", type=int)
    p.add_argument("--clip-skip", type=int)
    p.add_argument("--emphasis", choices=["Original", "No norm", "None"], help="how (word:1.2) weights apply")
    p.add_argument(
        "--pad-conds", action="store_const", const=True, help="pad prompt and negative to one length"
    )
    p.add_argument(
        "--s-min-uncond",
        type=float,
        metavar="SIGMA",
        help="skip the negative prompt below this sigma on odd steps, faster (A1111's NGMS; 0: off)",
    )
    p.add_argument(
        "--s-min-uncond-all",
        action="store_const",
        const=True,
        help="with --s-min-uncond: skip on every step below the sigma, not every other one",
    )
    p.add_argument(
        "--token-merging-ratio",
        type=float,
        metavar="RATIO",
        help="merge this share of self-attention tokens, faster and approximate (A1111's ToMe; 0: off)",
    )
    p.add_argument(
        "--deepcache-interval",
        type=int,
        metavar="N",
        help="the full UNet every N-th step, its outer layers only between: faster, approximate (0: off)",
    )
    p.add_argument(
        "--vae-decode-method",
        choices=["Full", "TAESD"],
        help="TAESD: decode with models/VAE-taesd/taesd_decoder.pth, fast and approximate (default Full)",
    )
    p.add_argument(
        "--prediction", choices=["epsilon", "v_prediction"], help="override the model's prediction type"
    )
    p.add_argument("--from-png", type=Path, help="rebuild the request from a PNG's parameters")
    p.add_argument(
        "--out", type=Path, help=f"save images in this folder (default outputs/{task}-images/DATE)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument(
        "--dtype", choices=["fp32", "fp16", "bf16"], help="compute dtype (default: fp16 on GPU, fp32 on CPU)"
    )
    _add_low_memory(p)
    _add_common(p)


TXT2IMG_FLAG_FIELDS = {
    "prompt": "prompt",
    "negative": "negative_prompt",
    "model": "model",
    "vae": "vae",
    "sampler": "sampler_name",
    "scheduler": "scheduler",
    "steps": "steps",
    "cfg": "cfg_scale",
    "eta": "eta",
    "seed": "seed",
    "subseed": "subseed",
    "subseed_strength": "subseed_strength",
    "width": "width",
    "height": "height",
    "batch_size": "batch_size",
    "batch_count": "n_iter",
    "clip_skip": "clip_skip",
    "emphasis": "emphasis",
    "pad_conds": "pad_conds",
    "s_min_uncond": "s_min_uncond",
    "s_min_uncond_all": "s_min_uncond_all",
    "token_merging_ratio": "token_merging_ratio",
    "deepcache_interval": "deepcache_interval",
    "vae_decode_method": "sd_vae_decode_method",
    "prediction": "prediction",
}


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so usage errors share the one-line exit-2 path."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sfumato", description="Local AI image generation, A1111-compatible.")
    parser.add_argument("--version", action="version", version=f"sfumato {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _txt2img_parser(sub)
    add_img2img_parser(sub, _generation_args)
    sub.choices["img2img"].set_defaults(handler=cmd_img2img)
    add_gif2gif_parser(sub, _generation_args)
    sub.choices["gif2gif"].set_defaults(handler=cmd_gif2gif)
    add_extras_parsers(sub, _add_common)
    add_tools_parsers(sub, _add_common, lambda args: _settings(args))

    info = sub.add_parser("png-info", help="show the generation parameters stored in an image")
    info.add_argument("file", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON (parameters parsed, plus other chunks)")
    info.set_defaults(handler=cmd_png_info)

    _list_command(
        sub, "models", "model folders", "every checkpoint with family, dtype, size and hash", cmd_models_list
    )
    _list_command(
        sub,
        "embeddings",
        "textual-inversion embeddings",
        "every embedding with vectors, family and short hash",
        cmd_embeddings_list,
    )
    _list_command(
        sub,
        "loras",
        "LoRA and LyCORIS networks",
        "every network with family, kinds, rank, alpha, hash and training metadata",
        cmd_loras_list,
    )

    evaluation = sub.add_parser("eval", help="score a model with an independent checker")
    eval_sub = evaluation.add_subparsers(dest="eval_command", required=True)
    shapes = eval_sub.add_parser(
        "shapes", help="held-out shapes-world prompts: colour, shape, position, count"
    )
    shapes.add_argument("--model", help="checkpoint (default: the default model)")
    shapes.add_argument(
        "--count", type=int, default=200, help="one-object prompts (two-object: half as many)"
    )
    shapes.add_argument("--steps", type=int, default=20)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--device")
    shapes.add_argument(
        "--reconstruct",
        action="store_true",
        help="score the model's VAE round trip of each scene's true image (the ceiling), not generations",
    )
    shapes.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a request field for every image, e.g. s_min_uncond=3 or cfg_scale=5 (JSON values); repeatable",
    )
    _add_common(shapes)
    shapes.set_defaults(handler=cmd_eval_shapes)
    _serve_parser(sub)
    return parser


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="start the HTTP server: A1111-compatible API, job queue, web UI")
    serve.add_argument(
        "--listen", action="store_true", help="bind to all interfaces (0.0.0.0) instead of 127.0.0.1"
    )
    serve.add_argument("--host", help="bind to this address (overrides --listen)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--api-auth", metavar="USER:PASS[,USER2:PASS2]", help="HTTP Basic auth on the API")
    serve.add_argument("--ui-auth", metavar="USER:PASS[,USER2:PASS2]", help="HTTP Basic auth on the web UI")
    serve.add_argument(
        "--cors-allow-origins",
        metavar="ORIGIN[,ORIGIN]",
        help="origins allowed to call the API from a browser",
    )
    serve.add_argument("--device")
    serve.add_argument("--dtype")
    _add_low_memory(serve)
    serve.add_argument(
        "--compile",
        action="store_const",
        const=True,
        help="run the UNet through torch.compile (with freezing): each new image size first compiles "
        "for a minute or more, then every image is faster; the compile cache is kept in the data dir",
    )
    _add_common(serve)
    serve.set_defaults(handler=cmd_serve)


def _settings(args: argparse.Namespace, **cli: Any):
    from sfumato.settings import load_settings

    return load_settings({"data_dir": args.data_dir, **cli}, settings_file=args.settings)


def cmd_png_info(args: argparse.Namespace) -> int:
    from sfumato.pnginfo import as_json, as_text, read_metadata

    meta = read_metadata(args.file)
    if args.json:
        print(json.dumps(as_json(meta), ensure_ascii=False, indent=2))
    else:
        print(as_text(meta))
    return 0


def _print_rows(
    rows: list[dict[str, Any]],
    columns: dict[str, Callable[[dict[str, Any]], object]],
    *,
    as_json: bool,
    kind: str,
) -> int:
    """A listing as JSON, or as an aligned table with one header line."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no {kind} found", file=sys.stderr)
        return 0
    table = [tuple(columns)] + [
        tuple("" if (v := get(r)) is None else str(v) for get in columns.values()) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from sfumato.models.catalog import describe_checkpoints

    columns = {
        "name": lambda r: r["name"],
        "family": lambda r: r["family"],
        "dtype": lambda r: r["dtype"],
        "size": lambda r: f"{r['size_bytes'] / 2**20:,.1f} MiB",
        "hash": lambda r: r["hash"],
    }
    return _print_rows(describe_checkpoints(_settings(args)), columns, as_json=args.json, kind="checkpoints")


def cmd_embeddings_list(args: argparse.Namespace) -> int:
    from sfumato.models.hashes import HashCache
    from sfumato.prompts.embeddings import EmbeddingDatabase

    settings = _settings(args)
    hashes = HashCache(settings.hash_cache_file)
    columns = {
        "name": lambda r: r["name"],
        "vectors": lambda r: r["vectors"],
        "family": lambda r: r["family"],
        "hash": lambda r: r["shorthash"],
        "note": lambda r: r["note"],
    }
    rows = EmbeddingDatabase.load(settings.model_dirs("embeddings"), hashes).rows()
    return _print_rows(rows, columns, as_json=args.json, kind="embeddings")


def cmd_loras_list(args: argparse.Namespace) -> int:
    from sfumato.adapters.network_registry import describe_network, network_entries
    from sfumato.models.hashes import HashCache

    settings = _settings(args)
    hashes = HashCache(settings.hash_cache_file)
    rows = []
    for entry in network_entries(settings):
        try:
            rows.append(describe_network(entry, hashes))
        except UserError as exc:  # one unreadable file does not hide the others
            rows.append({"name": entry.name, "path": str(entry.path), "note": str(exc)})
    columns = {
        "name": lambda r: r["name"],
        "family": lambda r: r.get("family"),
        "kinds": lambda r: ",".join(r.get("kinds", [])),
        "rank": lambda r: r.get("rank"),
        "alpha": lambda r: r.get("alpha"),
        "hash": lambda r: r.get("hash"),
        "base model": lambda r: r.get("base_model"),
        "trigger words": lambda r: ", ".join(r.get("trigger_words", [])[:5]) or r.get("note"),
    }
    return _print_rows(rows, columns, as_json=args.json, kind="LoRAs")


def _request_fields(assignments: list[str]) -> dict[str, object]:
    """`FIELD=VALUE` pairs; a value is JSON when it parses as JSON (3, true, "x"), else the text."""
    fields: dict[str, object] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--set wants FIELD=VALUE, not {assignment!r}", field="set")
        try:
            fields[name.strip()] = json.loads(text)
        except json.JSONDecodeError:
            fields[name.strip()] = text
    return fields


def cmd_eval_shapes(args: argparse.Namespace) -> int:
    from sfumato.eval.run import evaluate_checkpoint

    if args.count < 1:
        raise UserError("--count must be at least 1", field="count")
    report = evaluate_checkpoint(
        _settings(args, device=args.device),
        model=args.model,
        count=args.count,
        seed=args.seed,
        steps=args.steps,
        fields=_request_fields(args.set),
        reconstruct=args.reconstruct,
    )
    print(json.dumps(report, indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sfumato.server.app import ServeOptions, create_app
    from sfumato.server.security import parse_credentials

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be from 1 to 65535, not {args.port}", field="port")
    options = ServeOptions(
        host=args.host or ("0.0.0.0" if args.listen else "127.0.0.1"),
        port=args.port,
        api_auth=parse_credentials(args.api_auth, "--api-auth"),
        ui_auth=parse_credentials(args.ui_auth, "--ui-auth"),
        cors_allow_origins=tuple(o.strip() for o in (args.cors_allow_origins or "").split(",") if o.strip()),
    )
    app = create_app(_settings(args, **_compute(args), torch_compile=args.compile), options)
    print(f"sfumato: serving on http://{options.host}:{options.port} (API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning")
    return 0


def _interrupt_flag() -> tuple[Callable[[], bool], Callable[[], None]]:
    """First Ctrl-C asks the sampler to stop after its step; the second one stops at once."""
    state = {"stop": False}
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        if state["stop"]:
            raise KeyboardInterrupt
        state["stop"] = True
        print("\nsfumato: stopping after this step (Ctrl-C again to stop now)", file=sys.stderr)

    signal.signal(signal.SIGINT, handler)
    return (lambda: state["stop"]), (lambda: signal.signal(signal.SIGINT, previous))


def _generation_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {field: getattr(args, flag) for flag, field in TXT2IMG_FLAG_FIELDS.items()}
    return {k: v for k, v in fields.items() if v is not None}


def _run_job(job: Any, on_saved: Callable[[Any], None] | None = None) -> int:
    """Run a generation job with Ctrl-C handling; by default print each saved file's path."""
    should_stop, restore = _interrupt_flag()
    try:
        paths = job.run(
            should_stop=should_stop, on_saved=on_saved or (lambda saved: print(saved.path, flush=True))
        )
    finally:
        restore()
    return EXIT_INTERRUPTED if job.interrupted else (0 if paths else EXIT_USER_ERROR)


def cmd_txt2img(args: argparse.Namespace) -> int:
    from sfumato.app import Txt2ImgJob

    fields = _generation_fields(args)
    hires = {field: getattr(args, flag) for flag, field in HIRES_FLAG_FIELDS.items()}
    fields.update({k: v for k, v in hires.items() if v is not None})
    if args.from_png is None and "prompt" not in fields:
        raise UserError("a prompt is needed (or --from-png FILE)", field="prompt")
    settings = _settings(args, **_compute(args))
    return _run_job(Txt2ImgJob(settings, fields, from_png=args.from_png, out_dir=args.out))


def cmd_img2img(args: argparse.Namespace) -> int:
    from sfumato.cli_images import cmd_img2img as run_img2img

    args.settings_obj = _settings(args, **_compute(args))
    return run_img2img(args, _generation_fields(args), _run_job)


def cmd_gif2gif(args: argparse.Namespace) -> int:
    from sfumato.cli_images import cmd_gif2gif as run_gif2gif

    args.settings_obj = _settings(args, **_compute(args))
    return run_gif2gif(args, _generation_fields(args), _run_job)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.handler(args))
    except _ArgumentError as exc:
        print(f"sfumato: error: {exc} (see sfumato --help)", file=sys.stderr)
        return EXIT_USER_ERROR
    except UserError as exc:
        print(f"sfumato: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("sfumato: stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
