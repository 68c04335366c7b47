"""Encode prompt text with a checkpoint's text encoder(s), the way A1111 does.

Tokenising (A1111's `tokenize_line`): the prompt is split into weighted pieces (`parse_attention`),
each piece tokenised, and the tokens filled into chunks of 75. `BREAK` closes a chunk early. When a
chunk fills up and a comma lies within its last 20 tokens, the tokens after that comma move to the
next chunk, so phrases are not cut apart. A textual-inversion embedding named in the prompt takes as
many positions as it has vectors, and never straddles two chunks. Each chunk becomes
`<start> tokens <end> <pad>…` (77 ids) and is encoded alone; the chunks' states are concatenated, so a
prompt is never truncated.

Emphasis (A1111's "Original"): the hidden states are multiplied by their tokens' weights, then scaled
so their mean is what it was before. "No norm" skips the rescaling; "None" ignores weights.

Which hidden layer is used follows A1111 per family: SD1 takes layer -clip_skip and applies the final
layer norm; SD2 takes the penultimate layer of the original 24 (our SD2 encoder is built without the
unused last layer, so "last" here is that layer); SDXL takes the penultimate layer of both encoders,
concatenated, and the pooled, projected output of the second's first chunk (A1111 ignores clip skip
there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from transformers import CLIPTokenizer

from sfumato.adapters.patcher import Activation
from sfumato.models.loader import LoadedModel
from sfumato.prompts.extra_networks import ExtraNetworkCall
from sfumato.prompts.parser import parse_attention

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20
Emphasis = Literal["Original", "No norm", "None"]
EMPHASIS_MODES: tuple[str, ...] = ("Original", "No norm", "None")


class EmbeddingLike(Protocol):
    """What encoding needs of a textual-inversion embedding (see sfumato.prompts.embeddings)."""

    name: str
    vectors: int

    def for_encoder(self, kind: str, width: int) -> torch.Tensor | None: ...


EmbeddingLookup = Callable[[list[int], int], tuple[EmbeddingLike | None, int | None]]
"""(prompt token ids, position) -> (embedding named there, how many prompt tokens its name takes)."""


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


@dataclass
class PromptChunk:
    """77 token ids with their weights, and where embeddings' vectors replace placeholder tokens."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, EmbeddingLike]] = field(default_factory=list)


def tokenize_chunks(
    tokenizer: CLIPTokenizer,
    text: str,
    lookup: EmbeddingLookup | None = None,
    comma_backtrack: int = COMMA_BACKTRACK,
) -> list[PromptChunk]:
    """A1111's chunking of a weighted prompt into 77-id chunks (see the module docstring)."""
    parsed = parse_attention(text)
    pieces = tokenizer([piece for piece, _ in parsed], add_special_tokens=False, truncation=False)[
        "input_ids"
    ]
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    last_comma = -1

    def close_chunk() -> None:
        nonlocal chunk, last_comma
        pad = CHUNK_TOKENS - len(chunk.tokens)
        chunk.tokens = [start, *chunk.tokens, *[end] * pad, end]
        chunk.multipliers = [1.0, *chunk.multipliers, *[1.0] * pad, 1.0]
        chunks.append(chunk)
        chunk, last_comma = PromptChunk(), -1

    for tokens, (piece, weight) in zip(pieces, parsed, strict=True):
        if piece == "BREAK" and weight == -1:
            close_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (
                comma_backtrack
                and len(chunk.tokens) == CHUNK_TOKENS
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= comma_backtrack
            ):
                cut = last_comma + 1
                moved_tokens, moved_weights = chunk.tokens[cut:], chunk.multipliers[cut:]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                close_chunk()
                chunk.tokens, chunk.multipliers = moved_tokens, moved_weights
            if len(chunk.tokens) == CHUNK_TOKENS:
                close_chunk()
            embedding, name_length = lookup(tokens, position) if lookup else (None, None)
            if embedding is None or name_length is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                position += 1
                continue
            size = int(embedding.vectors)
            if len(chunk.tokens) + size > CHUNK_TOKENS:
                close_chunk()
            chunk.fixes.append((len(chunk.tokens), embedding))
            chunk.tokens += [0] * size
            chunk.multipliers += [weight] * size
            position += name_length
    if chunk.tokens or not chunks:
        close_chunk()
    return chunks


def _text_model(encoder: torch.nn.Module) -> torch.nn.Module:
    """transformers >= 5.6 flattened CLIPTextModel; the WithProjection model still wraps `text_model`."""
    return getattr(encoder, "text_model", encoder)


@contextmanager
def _embedding_fixes(encoder: torch.nn.Module, vectors: list[tuple[int, torch.Tensor]]) -> Iterator[None]:
    """Put textual-inversion vectors in place of their placeholder tokens' embeddings for one call."""
    if not vectors:
        yield
        return

    def replace(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for offset, vector in vectors:
            output[0, offset + 1 : offset + 1 + vector.shape[0]] = vector.to(output)
        return output

    handle = _text_model(encoder).embeddings.token_embedding.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class EncoderRole:
    """How one text encoder is read: which layer, whether the final norm applies, its padding."""

    kind: Literal["clip_l", "open_clip"]
    layer_from_end: int
    final_norm: bool
    pad_with_zero: bool
    pooled: bool = False


def encoder_roles(model: LoadedModel, clip_skip: int) -> list[EncoderRole]:
    if model.family == "sdxl":
        return [EncoderRole("clip_l", 2, False, False), EncoderRole("open_clip", 2, False, True, pooled=True)]
    if model.family == "sd2":
        return [EncoderRole("open_clip", clip_skip, True, True)]
    return [EncoderRole("clip_l", clip_skip, True, False)]


def encoder_widths(model: LoadedModel) -> list[tuple[str, int]]:
    """(kind, width) of each text encoder: what an embedding must provide to be used with this model
    (A1111 registers only embeddings that fit; others stay plain words in the prompt)."""
    roles = encoder_roles(model, 1)
    return [
        (role.kind, _text_model(encoder).embeddings.token_embedding.embedding_dim)
        for role, encoder in zip(roles, model.text_encoders, strict=True)
    ]


def _apply_emphasis(hidden: torch.Tensor, weights: list[float], emphasis: str) -> torch.Tensor:
    if emphasis == "None" or all(w == 1.0 for w in weights):
        return hidden
    original_mean = hidden.mean()
    hidden = hidden * torch.tensor(weights).reshape(1, -1, 1).to(hidden)
    new_mean = hidden.mean()
    # A mean of ~0 (layer-normed states with no bias, as in tiny test models) has nothing to restore.
    if emphasis == "No norm" or new_mean.abs() <= 1e-6 * hidden.abs().mean():
        return hidden
    return hidden * (original_mean / new_mean)


class PromptEncoder:
    """Encodes prompt texts for one model and settings; each distinct text is encoded once."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        clip_skip: int = 1,
        emphasis: str = "Original",
        lookup_for: Callable[[CLIPTokenizer], EmbeddingLookup] | None = None,  # see encoder_widths
    ) -> None:
        self.model = model
        self.roles = encoder_roles(model, clip_skip)
        self.emphasis = emphasis
        self.lookup_for = lookup_for
        self.used_embeddings: dict[str, EmbeddingLike] = {}
        self._cache: dict[str, Conditioning] = {}

    def activate_networks(self, calls: list[ExtraNetworkCall]) -> Activation:
        """Apply the LoRA/LyCORIS networks the prompt's tags name to the model (its `networks`
        patcher), dropping encodings made with other networks on; other tag kinds get a note."""
        patcher = getattr(self.model, "networks", None)
        activation = patcher.activate(calls) if patcher is not None else Activation()
        if activation.changed:
            self._cache.clear()
        handled = patcher.kinds if patcher is not None else ()
        activation.notes.extend(
            f"<{call.kind}:{call.name}> ignored: {call.kind} networks are not supported yet"
            for call in calls
            if call.kind not in handled
        )
        return activation

    def __call__(self, text: str) -> Conditioning:
        if text not in self._cache:
            self._cache[text] = self._encode(text)
        return self._cache[text]

    @torch.no_grad()
    def _encode(self, text: str) -> Conditioning:
        states, pooled = [], None
        for role, encoder, tokenizer in zip(
            self.roles, self.model.text_encoders, self.model.tokenizers, strict=True
        ):
            chunks = tokenize_chunks(tokenizer, text, self.lookup_for(tokenizer) if self.lookup_for else None)
            encoded = []
            for index, chunk in enumerate(chunks):
                hidden, first_pooled = self._encode_chunk(role, encoder, tokenizer, chunk)
                encoded.append(hidden)
                if role.pooled and index == 0:
                    pooled = first_pooled
            states.append(torch.cat(encoded, dim=1))
        return Conditioning(cross=torch.cat(states, dim=-1), pooled=pooled)

    def _encode_chunk(
        self, role: EncoderRole, encoder: torch.nn.Module, tokenizer: CLIPTokenizer, chunk: PromptChunk
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = list(chunk.tokens)
        if role.pad_with_zero:  # OpenCLIP encoders pad with id 0 after the first end token
            first_end = ids.index(tokenizer.eos_token_id, 1)
            ids[first_end + 1 :] = [tokenizer.pad_token_id] * (len(ids) - first_end - 1)
        width = _text_model(encoder).embeddings.token_embedding.embedding_dim
        vectors = []
        for offset, embedding in chunk.fixes:
            vector = embedding.for_encoder(role.kind, width)
            if vector is None:  # the lookup offers only embeddings that fit (see encoder_widths)
                raise ValueError(f"embedding {embedding.name!r} has no {width}-wide vectors")
            self.used_embeddings[embedding.name] = embedding
            vectors.append((offset, vector))
        input_ids = torch.tensor([ids], device=self.model.device)
        with _embedding_fixes(encoder, vectors):
            out = encoder(input_ids=input_ids, output_hidden_states=True)
        if role.final_norm:
            hidden = out.last_hidden_state
            if role.layer_from_end > 1:
                hidden = _text_model(encoder).final_layer_norm(out.hidden_states[-role.layer_from_end])
        else:
            hidden = out.hidden_states[-role.layer_from_end]
        hidden = _apply_emphasis(hidden, chunk.multipliers, self.emphasis)
        return hidden, getattr(out, "text_embeds", None) if role.pooled else None


def encode_prompt(
    model: LoadedModel, text: str, clip_skip: int = 1, emphasis: str = "Original"
) -> Conditioning:
    """Conditioning for one prompt text (no embeddings); see PromptEncoder for the cached, full form."""
    return PromptEncoder(model, clip_skip=clip_skip, emphasis=emphasis)(text)
