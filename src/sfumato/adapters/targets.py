"""Which layer of a loaded model a network file's key means.

LoRA files name layers in three dialects, and all three occur in the wild for the same model:
- kohya/A1111 (`lora_unet_…`, `lora_te_…`, `lora_te1_…`/`lora_te2_…` for SDXL's two encoders): module
  paths with `_` for `.`; the UNet part in diffusers' names (SD1/SD2 LoRAs from sd-scripts) or in the
  original LDM names (SDXL LoRAs from sd-scripts, and LoRAs from LDM-based trainers);
- diffusers/PEFT (`unet.…`, `text_encoder.…`, `text_encoder_2.…`; UNet names without a prefix in
  diffusers' old attention-processor files): dotted diffusers/transformers names.
Every Linear and Conv2d of the UNet and the text encoders is indexed under each name it can have, so a
lookup is one dictionary access. The LDM names come from the same module map the checkpoint exporter
uses (`models.ldm_export`), so there is one source of truth for the renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sfumato.models.ldm_export import unet_to_ldm
from sfumato.models.loader import LoadedModel

PATCHABLE = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class Target:
    """A layer a network can patch, and which multiplier applies to it (`te` or `unet`)."""

    name: str  # "unet.<diffusers name>", "te0.<name>", "te1.<name>": stable across dialects
    module: nn.Linear | nn.Conv2d
    component: str  # "unet" or "te"


def _text_name(name: str) -> str:
    """transformers' CLIP modules with or without the `text_model.` level, as one name."""
    return name.removeprefix("text_model.")


def _underscored(name: str) -> str:
    return name.replace(".", "_")


def build_index(model: LoadedModel) -> dict[str, Target]:
    """Every spelling of every patchable layer -> its Target."""
    index: dict[str, Target] = {}
    unet_modules = {name: m for name, m in model.unet.named_modules() if isinstance(m, PATCHABLE)}
    ldm_names = unet_to_ldm({f"{name}.weight": name for name in unet_modules}, model.unet.config)  # type: ignore[arg-type]
    ldm_of = {diffusers: ldm.removesuffix(".weight") for ldm, diffusers in ldm_names.items()}
    for name, module in unet_modules.items():
        target = Target(f"unet.{name}", module, "unet")
        for spelling in (
            f"unet.{name}",
            name,  # diffusers' old attention-processor files have no `unet.` prefix
            f"lora_unet_{_underscored(name)}",
            f"lora_unet_{_underscored(ldm_of[name])}",
        ):
            index[spelling] = target
    sdxl = len(model.text_encoders) == 2
    for number, encoder in enumerate(model.text_encoders):
        diffusers_prefix = "text_encoder" if number == 0 else f"text_encoder_{number + 1}"
        kohya_prefix = f"lora_te{number + 1}_" if sdxl else "lora_te_"
        for raw, module in encoder.named_modules():
            if not isinstance(module, PATCHABLE):
                continue
            name = _text_name(raw)
            target = Target(f"te{number}.{name}", module, "te")
            for spelling in (
                f"{diffusers_prefix}.{name}",
                f"{diffusers_prefix}.text_model.{name}",
                f"{kohya_prefix}text_model_{_underscored(name)}",
                f"{kohya_prefix}{_underscored(name)}",
            ):
                index[spelling] = target
    return index
