"""Image models from the ESRGAN family (and other spandrel architectures): upscalers for Extras and
hires fix, and masked-image models (LaMa) for object removal. `spandrel` detects the architecture and
hyper-parameters from the weights; we add safe file reading, tiling and the A1111 naming."""
