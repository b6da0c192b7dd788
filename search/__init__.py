"""search layer (see README)."""
