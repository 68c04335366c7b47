"""sfumato: a local AI image-generation studio that honours the A1111/ComfyUI conventions."""

__version__ = "0.1.0"
