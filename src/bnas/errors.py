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


def non_finite(on_nan: str, command: str, which: str, epoch: int, step: int, out: str, lrs: str) -> int:
    """--on-nan skip: 1 (a skipped step to count); stop (the default): raise, naming the checkpoint that is kept."""
    if on_nan == "skip":
        return 1
    if epoch:
        kept = f"the checkpoint of epoch {epoch} is kept in {out}: "
        kept += f"continue with bnas {command} --resume {out} --on-nan skip"
    else:
        kept = "no epoch had finished: rerun with --on-nan skip"
    raise NumericalError(
        f"the {which} loss or gradient became NaN or infinite at epoch {epoch + 1}, step {step + 1}; "
        f"{kept}, or start again with a lower {lrs}"
    )
