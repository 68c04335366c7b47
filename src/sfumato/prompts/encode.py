"""Encode prompt text with a checkpoint's text encoder(s), the way A1111 does.

Long prompts are cut into chunks of 75 tokens; each chunk becomes `<start> tokens <end> <pad>…` (77
ids), is encoded on its own, and the chunks' hidden states are concatenated, so a prompt is never
truncated. Which hidden layer is used follows A1111 per family: SD1 takes layer -clip_skip and applies
the final layer norm; SD2 takes the penultimate layer of the original 24 (our SD2 encoder is built
without the unused last layer, so "last" here is that layer); SDXL takes the penultimate layer of both
encoders, concatenated, and the pooled, projected output of the second (A1111 ignores clip skip there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import CLIPTokenizer

from sfumato.models.loader import LoadedModel

CHUNK_TOKENS = 75


@dataclass
class Conditioning:
    """Cross-attention states for one prompt (1 × tokens × width) and, for SDXL, the pooled vector."""

    cross: torch.Tensor
    pooled: torch.Tensor | None = None

    @staticmethod
    def batch(items: Sequence[Conditioning]) -> Conditioning:
        pooled = [c.pooled for c in items]
        return Conditioning(
            cross=torch.cat([c.cross for c in items]),
            pooled=None if pooled[0] is None else torch.cat(pooled),  # type: ignore[arg-type]
        )


def chunk_token_ids(tokenizer: CLIPTokenizer, text: str) -> list[list[int]]:
    """Token ids in 77-id chunks: start, up to 75 prompt tokens, end, then padding."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    start, end, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    pieces = [ids[i : i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)] or [[]]
    return [[start, *piece, end] + [pad] * (CHUNK_TOKENS - len(piece)) for piece in pieces]


def _hidden(encoder: torch.nn.Module, ids: torch.Tensor, layer_from_end: int, final_norm: bool):
    out = encoder(input_ids=ids, output_hidden_states=True)
    hidden = out.hidden_states[-layer_from_end]
    if final_norm and layer_from_end > 1:
        text_model = getattr(encoder, "text_model", encoder)
        hidden = text_model.final_layer_norm(hidden)
    elif final_norm:
        hidden = out.last_hidden_state
    return hidden, out


@torch.no_grad()
def encode_prompt(model: LoadedModel, text: str, clip_skip: int = 1) -> Conditioning:
    """Conditioning for one prompt text."""
    device = model.device
    if model.family == "sdxl":
        states, pooled = [], None
        for index, (encoder, tokenizer) in enumerate(zip(model.text_encoders, model.tokenizers, strict=True)):
            chunks = []
            for chunk_ids in chunk_token_ids(tokenizer, text):
                ids = torch.tensor([chunk_ids], device=device)
                hidden, out = _hidden(encoder, ids, 2, final_norm=False)
                chunks.append(hidden)
                if index == 1 and pooled is None:  # A1111 pools the first chunk only
                    pooled = out.text_embeds
            states.append(torch.cat(chunks, dim=1))
        return Conditioning(cross=torch.cat(states, dim=-1), pooled=pooled)
    encoder, tokenizer = model.text_encoders[0], model.tokenizers[0]
    chunks = []
    for chunk_ids in chunk_token_ids(tokenizer, text):
        ids = torch.tensor([chunk_ids], device=device)
        hidden, _ = _hidden(encoder, ids, clip_skip, final_norm=True)
        chunks.append(hidden)
    return Conditioning(cross=torch.cat(chunks, dim=1))
