"""The root of Ouro's typed exceptions; each module defines its own subclasses."""


class OuroError(Exception):
    """Base class for errors Ouro raises on purpose (and callers may handle)."""
