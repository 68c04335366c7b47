"""Pixel-level work shared by the image tasks: reading image files safely, A1111's resize modes,
inpainting masks (blur, crop region, fill) and outpainting canvases."""
