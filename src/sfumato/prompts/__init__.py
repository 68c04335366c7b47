"""Prompt text -> conditioning tensors (the full A1111 prompt language lands in its own issue)."""
