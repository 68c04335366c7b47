"""Generation settings a checkpoint recommends, for the request fields its user leaves unset.

Why: the best CFG scale is a property of the model, not of the tool. Distilled models (Turbo,
Lightning) want CFG 1-2; sfumato's own small default model follows two-object prompts best at CFG 2
(`scripts/train_default_model.py` gives the sweep). InvokeAI keeps such "default settings" per model in
its model manager; here they travel inside the file, as the safetensors metadata key
`sfumato.recommended` (a JSON object of request fields), so a copied file keeps them.

They fill only the fields a request leaves unset: a value the user gives (CLI flag, API field, the web
UI's box, a PNG's infotext) always wins, and the saved infotext names the value used. Only numeric
fields the request model validates are honoured; a value it rejects is dropped, so a file with a bad
recommendation still loads and generates with the tool's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sfumato.errors import UserError
from sfumato.models.files import safetensors_metadata
from sfumato.request import GenerationRequest, validated

RECOMMENDED_KEY = "sfumato.recommended"
RECOMMENDABLE = ("cfg_scale", "steps", "clip_skip")


def recommended_fields(path: Path) -> dict[str, Any]:
    """The request fields the checkpoint at `path` recommends ({} for files that recommend none)."""
    declared = safetensors_metadata(path).get(RECOMMENDED_KEY)
    if not isinstance(declared, dict):
        return {}
    fields = {}
    for field in RECOMMENDABLE:
        if field not in declared:
            continue
        try:
            validated(GenerationRequest, {field: declared[field]})
        except UserError:
            continue
        fields[field] = declared[field]
    return fields
