"""sightline: a reproducible deep-learning pipeline (DVC + Lightning + BentoML)."""

__version__ = "0.1.0"
