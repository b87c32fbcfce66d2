"""Noisy Student Training (Xie et al., arXiv 1911.04252) in Keras 3 / TensorFlow 2."""

__version__ = "0.1.0"
