"""Pictures written by the evaluate stages (PNG files shown by ``dvc plots``)."""
