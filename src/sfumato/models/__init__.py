"""Model files: reading them safely, recognising their family, and loading them into components."""
