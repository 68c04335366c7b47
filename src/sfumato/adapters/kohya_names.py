"""The layers kohya's sd-scripts trains in a LoRA, under the names it writes them.

Targets are sd-scripts' defaults: the UNet's transformer blocks (attention, feed-forward, proj_in/out)
and the text encoders' attention and MLP layers; with `conv` also the ResNet convolutions (LoCon /
`conv_dim`). Names are `lora_unet_…` in diffusers module names for SD1/SD2 and in the original LDM names
for SDXL (sd-scripts' SDXL UNet is the original one), `lora_te_…` or `lora_te1_…`/`lora_te2_…`.
"""

from __future__ import annotations

from torch import nn

from sfumato.models.ldm_export import unet_to_ldm

Layers = dict[str, nn.Linear | nn.Conv2d]


def unet_layers(unet: nn.Module, *, conv: bool = False) -> Layers:
    layers: Layers = {}
    for name, module in unet.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        if ".attentions." in name or (conv and ".resnets." in name and name.endswith(("conv1", "conv2"))):
            layers[name] = module
    return layers


def text_layers(encoder: nn.Module) -> Layers:
    """Attention and MLP layers, named without transformers' optional `text_model.` level."""
    return {
        name.removeprefix("text_model."): module
        for name, module in encoder.named_modules()
        if isinstance(module, nn.Linear) and (".self_attn." in name or ".mlp." in name)
    }


def kohya_layers(unet: nn.Module, encoders: list[nn.Module], *, conv: bool = False) -> Layers:
    """kohya key prefix -> layer, for a UNet and its one (SD1/SD2) or two (SDXL) text encoders."""
    sdxl = len(encoders) == 2
    unet_part = unet_layers(unet, conv=conv)
    if sdxl:
        ldm = unet_to_ldm({f"{n}.weight": n for n in unet_part}, unet.config)  # type: ignore[arg-type, attr-defined]
        renamed = {diffusers: key.removesuffix(".weight") for key, diffusers in ldm.items()}
        names = {f"lora_unet_{renamed[n].replace('.', '_')}": m for n, m in unet_part.items()}
    else:
        names = {f"lora_unet_{n.replace('.', '_')}": m for n, m in unet_part.items()}
    for number, encoder in enumerate(encoders):
        prefix = f"lora_te{number + 1}_" if sdxl else "lora_te_"
        names |= {f"{prefix}text_model_{n.replace('.', '_')}": m for n, m in text_layers(encoder).items()}
    return names
