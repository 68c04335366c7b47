"""Tasks: thin compositions over the loaded components and the sampling loop (txt2img first)."""
