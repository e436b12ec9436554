"""Placeholder module: the perturbation family registers its methods here."""
