"""One file per model; importing a model file registers it."""

from sightline.models import classifier, gan, vae  # noqa: F401
