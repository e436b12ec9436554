"""Placeholder module: the linearization family registers its methods here."""
