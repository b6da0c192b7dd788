"""The one kind of error whose message is a complete, one-line explanation for a person (exit code 2)."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input a person can fix: the message names the key or file and what is allowed; no traceback is shown."""
