"""The conditioning a job needs at each sampling step: prompt editing, alternation and AND parts.

A1111 semantics: the positive prompt is split on AND into weighted parts (composable diffusion); each
part, and the negative prompt, gets its own prompt-editing schedule `[(end_step, text), …]`; at step
`s` (0-based) the first entry with `s <= end_step` applies. Extra-network tags (`<lora:…>`) are taken
out of the text before any of this, and handed to the adapter layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sfumato.adapters.patcher import Activation
from sfumato.prompts.encode import Conditioning, PromptEncoder
from sfumato.prompts.extra_networks import ExtraNetworkCall, extract_extra_networks
from sfumato.prompts.parser import split_and
from sfumato.prompts.schedule import prompt_schedule

Schedule = list[list]  # [[end_step, text], …] as prompt_schedule returns it


def text_at(schedule: Schedule, step: int) -> str:
    for end_step, text in schedule:
        if step <= end_step:
            return text
    return schedule[-1][1]


@dataclass
class ConditioningPlan:
    """Per-step (negative, [(positive part, weight), …]) for a batch, each distinct text encoded once."""

    encoder: PromptEncoder
    negative: Schedule
    positive: list[tuple[Schedule, float]]
    batch_size: int
    extra_networks: list[ExtraNetworkCall] = field(default_factory=list)
    activation: Activation = field(default_factory=Activation)  # what the tags did (encode_all)
    _batched: dict[str, Conditioning] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls, encoder: PromptEncoder, prompt: str, negative_prompt: str, steps: int, batch_size: int
    ) -> ConditioningPlan:
        prompt, calls = extract_extra_networks(prompt)
        negative_prompt, negative_calls = extract_extra_networks(negative_prompt)
        parts = [(prompt_schedule(text, steps), weight) for text, weight in split_and(prompt)]
        return cls(
            encoder=encoder,
            negative=prompt_schedule(negative_prompt, steps),
            positive=parts,
            batch_size=batch_size,
            extra_networks=calls + negative_calls,
        )

    def _batch(self, text: str) -> Conditioning:
        if text not in self._batched:
            self._batched[text] = Conditioning.batch([self.encoder(text)] * self.batch_size)
        return self._batched[text]

    def at(self, step: int) -> tuple[Conditioning, list[tuple[Conditioning, float]]]:
        negative = self._batch(text_at(self.negative, step))
        return negative, [
            (self._batch(text_at(schedule, step)), weight) for schedule, weight in self.positive
        ]

    def encode_all(self) -> None:
        """Put on the networks the tags ask for (they change the text encoders too), then encode every
        text the schedules name, before sampling starts (text encoders can then be offloaded, and
        the first step is not slower than the rest)."""
        self.activation = self.encoder.activate_networks(self.extra_networks)
        if self.activation.changed:
            self._batched.clear()
        for schedule in [self.negative, *(s for s, _ in self.positive)]:
            for _, text in schedule:
                self._batch(text)
