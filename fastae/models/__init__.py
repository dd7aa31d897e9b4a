"""Autoencoders built on fastae's kernels (NumPy; no framework needed)."""
from .autoencoder import Autoencoder
from .hierarchical import HierarchicalAutoencoder

__all__ = ["Autoencoder", "HierarchicalAutoencoder"]
