"""Independent checks of generated images (they never use the generator they judge)."""
