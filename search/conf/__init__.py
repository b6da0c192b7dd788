"""Hydra config module of the search command (composed by search.config)."""
