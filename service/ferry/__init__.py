"""ferry: production serving for scikit-learn models."""

__version__ = "0.1.0"
