"""BentoML services of the sightline models (see service.py)."""
