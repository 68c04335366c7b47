"""Supervised pretraining of a from-scratch text encoder: captions → the attributes they name.

Why: a text encoder trained from scratch *jointly* with a UNet only learns the words the UNet already
uses. On the shapes world the first default model learned colours but not positions: its encoder put
"top left" and "bottom right" 0.04 apart (relative L2 over the hidden states) against 0.5 for
"red"/"blue", the UNet's output moved 50× less for the position words than for a colour, and every
seed drew its object in the same place whatever the prompt said. The UNet cannot learn to use a word
its encoder does not separate, and the encoder gets no gradient to separate it until the UNet uses
it. Real CLIP never has this problem because it is pretrained (contrastively, on captioned images)
before any UNet sees it; here, where the generator knows every caption's ground truth, the same role is
played far more cheaply by classifying it: linear heads on the pooled (EOS) hidden state predict each
labelled attribute (cross-entropy, one head per attribute), so every attribute is linearly readable
from the states the UNet's cross-attention reads. The heads are thrown away afterwards.

Batches are `KohyaDataset` dicts; `labels[i]` holds the class indices of dataset item `i` (row order
of `dataset.items`), one column per head. A label of `IGNORED_LABEL` (-100, torch's ignore_index) marks
an attribute the caption does not name: it adds no loss and is left out of the accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer

from sfumato.training.objectives import caption_ids, load_prefixed_state_dict, prefixed_state_dict
from sfumato.training.trainer import StepContext

IGNORED_LABEL = -100


def _named_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the named targets; zero (not NaN, as torch gives) when none is named."""
    named = targets != IGNORED_LABEL
    if not bool(named.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[named], targets[named])


class CaptionLabelObjective:
    """Cross-entropy of linear heads on the text encoder's pooled output, summed over the heads."""

    def __init__(
        self,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        labels: Tensor,
        classes: Sequence[int],
    ) -> None:
        if labels.ndim != 2 or labels.shape[1] != len(classes):
            raise ValueError(f"labels must be (items, {len(classes)}), not {tuple(labels.shape)}")
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.labels = labels.long()
        width = text_encoder.config.hidden_size
        self.heads = nn.ModuleList(nn.Linear(width, count) for count in classes)

    def modules(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.text_encoder, "heads": self.heads}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.text_encoder.parameters()
        yield from self.heads.parameters()

    def state_dict(self) -> dict[str, Tensor]:
        return prefixed_state_dict(self.modules())

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        load_prefixed_state_dict(self.modules(), state)

    def logits(self, captions: list[str]) -> list[Tensor]:
        """Each head's (B, classes) logits for `captions`."""
        device = next(self.text_encoder.parameters()).device
        ids = caption_ids(self.tokenizer, captions, device)
        pooled = self.text_encoder(ids).pooler_output
        return [head(pooled) for head in self.heads]

    def loss(self, batch: Mapping[str, object], step: StepContext) -> Tensor:
        indices = batch["item_indices"]
        assert isinstance(indices, Tensor)
        targets = self.labels[indices]
        logits = self.logits(list(batch["captions"]))  # type: ignore[arg-type]
        device = logits[0].device
        return sum(
            (_named_cross_entropy(head.float(), targets[:, i].to(device)) for i, head in enumerate(logits)),
            start=torch.zeros((), device=device),
        )

    @torch.no_grad()
    def accuracy(self, captions: list[str], labels: Tensor) -> list[float]:
        """Per-head accuracy on `captions` with true `labels` (B, heads), over the labels not ignored."""
        predicted = [head.argmax(dim=1).cpu() for head in self.logits(captions)]
        named = labels != IGNORED_LABEL
        return [float((p == labels[:, i])[named[:, i]].float().mean()) for i, p in enumerate(predicted)]
