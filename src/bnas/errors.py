"""User-facing errors: the CLI prints their message as one sentence, without a traceback."""

from __future__ import annotations


class BnasError(Exception):
    """A mistake in the user's input or environment, reported as one clear sentence."""


class DataError(BnasError):
    """A data set is missing, incomplete or malformed."""


class GenotypeError(BnasError):
    """A genotype name is unknown or a genotype file is malformed or inconsistent."""


class ConfigError(BnasError):
    """A hyperparameter or option is invalid."""


class CheckpointError(BnasError):
    """A checkpoint is corrupt or belongs to another configuration or version."""


class NumericalError(BnasError):
    """A loss or gradient became NaN or infinite; the last complete epoch's checkpoint is kept."""
