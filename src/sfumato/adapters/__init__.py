"""Adapters that patch a loaded model and unpatch it again without reloading: LoRA and LyCORIS
networks (more kinds plug in beside them)."""
