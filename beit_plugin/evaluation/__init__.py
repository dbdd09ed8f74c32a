"""Offline evaluation of frozen features (no Runner, no training loop)."""
from .layer_probe import block_features, fit_logistic_probe, patch_labels

__all__ = ['block_features', 'fit_logistic_probe', 'patch_labels']
