"""Helpers for sfumato's own tests and for plugin authors: tiny models in real file formats."""
