"""Typed errors of the data pipeline."""

from __future__ import annotations

from ouro.errors import OuroError


class DataError(OuroError):
    """Base class for data pipeline errors."""


class DatasetFormatError(DataError):
    """An input file is not in the format its reader expects (the message says where)."""


class DatasetNotFoundError(DataError):
    """An input file or folder does not exist or holds none of the expected files."""
