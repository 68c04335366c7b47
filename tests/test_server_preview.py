"""Step previews: the fitted latent -> RGB map approximates what the VAE would decode."""

from __future__ import annotations

import numpy as np
import torch

from sfumato.data.shapes import eval_prompts, render
from sfumato.devices import pick_device
from sfumato.models.loader import load_checkpoint
from sfumato.models.registry import embedded_default_model
from sfumato.server.preview import LatentPreviewer


def test_preview_of_encoded_scenes_matches_their_colours():
    """On the embedded model's real VAE, previews of held-out scenes (never used in the fit) come
    within a small error of the scenes shrunk to latent size."""
    model = load_checkpoint(embedded_default_model(), device=pick_device("cpu"), dtype=torch.float32)
    previewer = LatentPreviewer()
    errors = []
    for _, scene in eval_prompts(6, seed=11, two_objects=False):
        image = render(scene, 64)
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        with torch.no_grad():
            latents = model.vae.encode(pixels).latent_dist.mean * model.vae.config.scaling_factor
        preview = np.asarray(previewer(model, latents), np.float32)
        expected = np.asarray(image.resize(preview.shape[1::-1], resample=3), np.float32)
        errors.append(np.abs(preview - expected).mean())
        # the background colour, the preview's most common colour, is right to within 25 levels
        assert np.abs(preview[0, 0] - expected[0, 0]).max() < 25
    assert np.mean(errors) < 20, errors
