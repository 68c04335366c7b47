"""The A1111 prompt language: text -> weighted pieces, per-step schedules, AND parts, extra-network tags.

`parse_attention`, `prompt_schedule`, `split_and` and `extract_extra_networks` are pure Python with
A1111's exact semantics; `sfumato.prompts.encode` turns their results into conditioning tensors.
"""

from sfumato.prompts.extra_networks import ExtraNetworkCall, extract_extra_networks
from sfumato.prompts.parser import parse_attention, split_and
from sfumato.prompts.schedule import prompt_schedule

__all__ = ["ExtraNetworkCall", "extract_extra_networks", "parse_attention", "prompt_schedule", "split_and"]
