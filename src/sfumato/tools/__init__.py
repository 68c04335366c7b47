"""Model tools that make new files: checkpoint merges, LoRA extraction, LoRAs baked into checkpoints."""
