"""One file per model; importing a model file registers it."""

from sightline.models import classifier, clip, gan, spam, vae  # noqa: F401
