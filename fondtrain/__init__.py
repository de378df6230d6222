"""fondtrain: train brain-like iterative VAEs (iP-VAE, iG-VAE, iGrelu-VAE) at scale."""

__version__ = "0.1.0"
