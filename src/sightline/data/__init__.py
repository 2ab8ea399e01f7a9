"""Datasets, preparation and DataModules."""
