"""Evaluation of trained models: metrics dicts and the pictures beside them."""
