"""Training data sfumato generates itself (no downloads): see `sfumato.data.shapes`."""
