"""`sfumato merge`, `sfumato merge-lora` and `sfumato extract-lora`: model files made from others."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sfumato.errors import UserError


def add_tools_parsers(sub: argparse._SubParsersAction, add_common: Callable, settings_of: Callable) -> None:
    merge = sub.add_parser("merge", help="merge checkpoints: weighted sum or add difference")
    merge.add_argument("models", nargs="+", help="A B (weighted) or A B C (add-diff): names or paths")
    merge.add_argument("--mode", choices=["weighted", "add-diff"], default="weighted")
    merge.add_argument(
        "--alpha", type=float, default=0.5, help="B's share (weighted) or the difference's scale"
    )
    merge.add_argument("--vae", help="bake this VAE in (a file in models/VAE or a path)")
    merge.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    merge.add_argument("--out", type=Path, required=True, help="the new .safetensors file")
    add_common(merge)
    merge.set_defaults(handler=lambda args: cmd_merge(args, settings_of(args)))

    bake = sub.add_parser("merge-lora", help="bake LoRAs into a checkpoint")
    bake.add_argument("model", help="checkpoint name or path")
    bake.add_argument("loras", nargs="+", help="LoRA names as in a prompt tag, each NAME or NAME:WEIGHT")
    bake.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    bake.add_argument("--out", type=Path, required=True, help="the new .safetensors file")
    add_common(bake)
    bake.set_defaults(handler=lambda args: cmd_merge_lora(args, settings_of(args)))

    extract = sub.add_parser("extract-lora", help="a fine-tune's difference from its base, as a LoRA")
    extract.add_argument("tuned", help="the fine-tuned checkpoint")
    extract.add_argument("base", help="the checkpoint it was tuned from")
    extract.add_argument("--dim", type=int, required=True, help="rank of the linear layers")
    extract.add_argument("--conv-dim", type=int, help="also the 3x3 convolutions, at this rank (LoCon)")
    extract.add_argument("--report", type=Path, help="write each layer's relative error here (JSON)")
    extract.add_argument("--out", type=Path, required=True, help="the new LoRA .safetensors file")
    add_common(extract)
    extract.set_defaults(handler=lambda args: cmd_extract_lora(args, settings_of(args)))


def _manager(settings: Any):
    from sfumato.app import make_manager

    return make_manager(settings)


def cmd_merge(args: argparse.Namespace, settings: Any) -> int:
    from sfumato.tools.merge import MergeRecipe, merge_checkpoints

    manager = _manager(settings)
    sources = [manager.checkpoint_path(name) for name in args.models]
    vae = manager.vae_path(args.vae, sources[0]) if args.vae else None
    recipe = MergeRecipe(args.mode, args.alpha, args.dtype)
    print(merge_checkpoints(sources, args.out, recipe, vae=vae, hashes=manager.hashes), flush=True)
    return 0


def _lora_calls(specs: list[str]):
    from sfumato.prompts.extra_networks import extract_extra_networks

    _, calls = extract_extra_networks("".join(f"<lora:{spec}>" for spec in specs))
    return calls


def cmd_merge_lora(args: argparse.Namespace, settings: Any) -> int:
    from sfumato.tools.lora_tools import merge_loras
    from sfumato.tools.merge import DTYPES

    model = _manager(settings).load(args.model)
    for note in merge_loras(model, _lora_calls(args.loras), args.out, dtype=DTYPES[args.dtype]):
        print(f"sfumato: {note}", file=sys.stderr)
    print(args.out, flush=True)
    return 0


def cmd_extract_lora(args: argparse.Namespace, settings: Any) -> int:
    import torch

    from sfumato.models.loader import load_checkpoint
    from sfumato.tools.lora_tools import extract_lora

    manager = _manager(settings)
    device, dtype = manager.device, torch.float32  # differences need full precision
    tuned = load_checkpoint(manager.checkpoint_path(args.tuned), device=device, dtype=dtype)
    base = load_checkpoint(manager.checkpoint_path(args.base), device=device, dtype=dtype)
    report = extract_lora(tuned, base, args.out, dim=args.dim, conv_dim=args.conv_dim)
    errors = [layer.relative_error for layer in report]
    print(
        f"sfumato: {len(report)} layers; relative error mean {sum(errors) / len(errors):.4f}, "
        f"max {max(errors):.4f} ({max(report, key=lambda layer: layer.relative_error).name})",
        file=sys.stderr,
    )
    if args.report:
        rows = [{"layer": r.name, "rank": r.rank, "relative_error": r.relative_error} for r in report]
        try:
            args.report.write_text(json.dumps(rows, indent=2))
        except OSError as exc:
            raise UserError(f"could not write {args.report}: {exc.strerror or exc}", field="report") from exc
    print(args.out, flush=True)
    return 0
