"""Networks applied to a loaded model from the prompt's tags, and taken off again: LoRA/LyCORIS
(`<lora:…>`, `<lyco:…>`) and A1111 hypernetworks (`<hypernet:…>`).

Applying adds each layer's ΔW × multiplier to the weight in place (so sampling costs nothing extra per
step), after copying the layer's original weight aside the first time a network touches it. The copies
are kept while the model stays loaded, as A1111 keeps them: switching networks then costs no copying. Taking the networks off copies the
originals back: the base model returns bit for bit, with no reload. The next generation asking for the
same networks at the same weights keeps them on (A1111 does the same); one asking for other networks or
weights restores first, then applies.

Hypernetworks change no weight: they run as pre-hooks on the attention layers' key and value
projections (`adapters.hypernetwork`), removed when taken off.

Only layers the file names and the model has are touched; a network whose layers the model does not
have (made for another family) or whose shapes do not fit is skipped with a note naming it, and the
generation goes on without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.models.attention_processor import Attention

from sfumato.adapters.hypernetwork import Hypernetwork, load_hypernetwork
from sfumato.adapters.network_files import NetworkFile, family_of, read_network
from sfumato.adapters.network_math import ShapeMismatch, layer_update
from sfumato.adapters.targets import Target, build_index
from sfumato.errors import UserError
from sfumato.models.loader import LoadedModel
from sfumato.prompts.extra_networks import ExtraNetworkCall

NETWORK_KINDS = ("lora", "lyco")  # A1111's tag names for LoRA and (older) LyCORIS networks
HYPERNET = "hypernet"


@dataclass(frozen=True)
class NetworkUse:
    """One network asked for by a prompt: which file, at which weights."""

    name: str
    path: Path
    te: float
    unet: float
    kind: str = "lora"


@dataclass
class Activation:
    """What a prompt's tags did: notes for the user, and `name -> short hash` of the networks applied."""

    notes: list[str] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)
    changed: bool = False  # the model's weights changed: earlier text encodings are stale

    def hashes_text(self) -> str | None:
        """A1111's "Lora hashes" infotext value."""
        return ", ".join(f"{name}: {short}" for name, short in self.hashes.items()) or None


class NetworkPatcher:
    """The networks on one loaded model, with the originals of every layer they changed."""

    def __init__(
        self,
        model: LoadedModel,
        find: Callable[[str], Path | None],
        short_hash: Callable[[NetworkFile], str],
        find_hypernetwork: Callable[[str], Path | None] | None = None,
    ) -> None:
        self.model = model
        self.find = find
        self.short_hash = short_hash
        self.find_hypernetwork = find_hypernetwork
        self.kinds = (*NETWORK_KINDS, HYPERNET) if find_hypernetwork else NETWORK_KINDS
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._hypernetworks: dict[Path, tuple[float, Hypernetwork]] = {}
        self._index: dict[str, Target] | None = None
        self._originals: dict[str, tuple[Target, torch.Tensor, torch.Tensor | None]] = {}
        self._active: tuple[NetworkUse, ...] = ()
        self._report = Activation()
        self._files: dict[Path, tuple[float, NetworkFile]] = {}

    @property
    def index(self) -> dict[str, Target]:
        if self._index is None:
            self._index = build_index(self.model)
        return self._index

    @property
    def active(self) -> tuple[NetworkUse, ...]:
        """The networks on the model now, in order: what its weights are (compiled graphs key on it)."""
        return self._active

    @property
    def hooks_unet(self) -> bool:
        """Whether hypernetwork hooks are on the UNet (a compiled UNet would not run them)."""
        return bool(self._hooks)

    def activate(self, calls: list[ExtraNetworkCall]) -> Activation:
        """Put on exactly the networks `calls` name (the kinds in `self.kinds`; other tags are left
        to their own handlers), taking off any others."""
        notes: list[str] = []
        uses = self._resolve(calls, notes)
        if uses == self._active:
            return Activation(notes + self._report.notes, dict(self._report.hashes))
        self.restore()
        report = Activation(notes, changed=True)
        for use in uses:
            self._apply(use, report)
        self._active, self._report = uses, Activation(report.notes[len(notes) :], dict(report.hashes))
        return report

    def restore(self) -> None:
        """Every changed layer back to its original weights, exactly; hypernetwork hooks removed. The
        originals' copies stay for the next networks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        with torch.no_grad():
            for target, weight, bias in self._originals.values():
                target.module.weight.copy_(weight)
                if bias is not None:
                    target.module.bias.copy_(bias)  # type: ignore[union-attr]
        self._active, self._report = (), Activation()

    def _resolve(self, calls: list[ExtraNetworkCall], notes: list[str]) -> tuple[NetworkUse, ...]:
        uses = []
        for call in calls:
            if call.kind not in self.kinds:
                continue
            hypernet = call.kind == HYPERNET
            find = self.find_hypernetwork if hypernet else self.find
            path = find(call.name) if find else None
            if path is None:
                what = "hypernetwork" if hypernet else "LoRA"
                notes.append(f"{what} {call.name!r} not found in the {what} folders: skipped")
                continue
            uses.append(NetworkUse(call.name, path, call.te_multiplier, call.unet_multiplier, call.kind))
        return tuple(uses)

    def _file(self, path: Path) -> NetworkFile:
        mtime = path.stat().st_mtime
        cached = self._files.get(path)
        if cached is None or cached[0] != mtime:
            self._files[path] = (mtime, read_network(path))
        return self._files[path][1]

    def _apply(self, use: NetworkUse, report: Activation) -> None:
        if use.kind == HYPERNET:
            self._apply_hypernetwork(use, report)
            return
        try:
            network = self._file(use.path)
        except UserError as exc:
            report.notes.append(f"LoRA {use.name!r} skipped: {exc}")
            return
        family = family_of(network)
        if family is not None and family != self.model.family:
            report.notes.append(
                f"LoRA {use.name!r} skipped: it was made for {family.upper()}, this model is "
                f"{self.model.family.upper()} (another model family)"
            )
            return
        placed = [(record, self.index.get(record.layer)) for record in network.layers.values()]
        matched = [(record, target) for record, target in placed if target is not None]
        if not matched:
            report.notes.append(
                f"LoRA {use.name!r} skipped: none of its layers is in this {self.model.family.upper()} "
                "model (it was made for another model family)"
            )
            return
        updates = []
        try:  # every layer checked before any is changed: a misfit file changes nothing
            for record, target in matched:
                multiplier = use.te if target.component == "te" else use.unet
                if multiplier:
                    updates.append((target, multiplier, layer_update(record, target.module.weight)))
        except ShapeMismatch as exc:
            report.notes.append(f"LoRA {use.name!r} skipped: its shapes do not fit this model ({exc})")
            return
        for target, multiplier, update in updates:
            self._keep_original(target)
            update.add_to(target.module, multiplier)
        unplaced = len(placed) - len(matched)
        if unplaced:
            report.notes.append(f"LoRA {use.name!r}: {unplaced} of its layers are not in this model")
        report.hashes[use.name] = self.short_hash(network)

    def _keep_original(self, target: Target) -> None:
        if target.name in self._originals:
            return
        module = target.module
        bias = module.bias.detach().clone() if module.bias is not None else None
        self._originals[target.name] = (target, module.weight.detach().clone(), bias)

    def _apply_hypernetwork(self, use: NetworkUse, report: Activation) -> None:
        """Pre-hooks on every attention's key and value projection whose input width the file has."""
        try:
            mtime = use.path.stat().st_mtime
            cached = self._hypernetworks.get(use.path)
            if cached is None or cached[0] != mtime:
                cached = (mtime, load_hypernetwork(use.path).to(self.model.device))
                self._hypernetworks[use.path] = cached
        except UserError as exc:
            report.notes.append(f"hypernetwork {use.name!r} skipped: {exc}")
            return
        network = cached[1]
        network.set_multiplier(use.te)
        hooked = 0
        for module in self.model.unet.modules():
            if not isinstance(module, Attention):
                continue
            modules = network.layers.get(module.to_k.in_features)
            if modules is None:
                continue
            for projection, hyper in zip((module.to_k, module.to_v), modules, strict=True):
                self._hooks.append(projection.register_forward_pre_hook(_rewrite_input(hyper)))
            hooked += 1
        if not hooked:
            report.notes.append(
                f"hypernetwork {use.name!r} skipped: none of its widths is an attention width of this model"
            )


def _rewrite_input(hyper: torch.nn.Module) -> Callable:
    def hook(module: torch.nn.Module, args: tuple) -> tuple:
        return (hyper(args[0]), *args[1:])

    return hook
