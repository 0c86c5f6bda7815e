"""difftrain: diffusion-model training on diffusers, datasets and Accelerate."""

__version__ = "0.1.0"
