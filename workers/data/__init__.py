"""Procedural data sets for the demo model (no download needed)."""
