"""Placeholder module: the structure family registers its methods here."""
