"""User-facing errors: the CLI prints their message as one sentence, without a traceback."""

from __future__ import annotations


class BnasError(Exception):
    """A mistake in the user's input or environment, reported as one clear sentence.

    The sentence names the library's arguments (`batch_size`, `resume=True`); `options` lists those names so
    that the command line can say its flags instead (`--batch-size`, `--resume`: `bnas.cli.flag_message`)."""

    def __init__(self, message: str = "", *, options: tuple[str, ...] | list[str] = ()):
        super().__init__(message)
        self.options = tuple(options)


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
    """on_nan 'skip': 1 (a skipped step to count); 'stop' (the default): raise, naming the checkpoint that is kept.
    `lrs` names the learning rates to lower ("lr/arch_lr"; leading dashes are dropped)."""
    if on_nan == "skip":
        return 1
    rates = [r.lstrip("-").replace("-", "_") for r in lrs.split("/")]
    if epoch:
        run = {"train": "training"}.get(command, command)
        kept = f"the checkpoint of epoch {epoch} is kept in {out}: continue the {run} with resume=True and "
        kept += "on_nan='skip'"
    else:
        kept = "no epoch had finished: rerun with on_nan='skip'"
    raise NumericalError(
        f"the {which} loss or gradient became NaN or infinite at epoch {epoch + 1}, step {step + 1}; "
        f"{kept}, or start again with a lower {' or '.join(rates)}",
        options=("resume", "on_nan", *rates),
    )


# ---- checks of user input: each raises ConfigError with one sentence naming the option by its field name
# (`batch_size`; "arch_betas B2" names an item); a name given as a flag ("--output") is a command's own


def _options(name: str) -> tuple[str, ...]:
    return () if name.startswith("-") else (name.split()[0],)


def _fail(name: str, message: str) -> ConfigError:
    return ConfigError(message, options=_options(name))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float
        return float("inf")


def check_int(name: str, value: object, low: int, optional: bool = False) -> None:
    """A whole number >= low (None allowed when `optional`)."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(name, f"{name} must be a whole number, got {value!r}")
    if value < low:
        raise _fail(name, f"{name} must be at least {low}, got {value}")
    if value >= 2**63:  # beyond torch's int64 (and, as a float, beyond exact)
        raise _fail(name, f"{name} must be below 2^63, got {value}")


def check_float(name: str, value: object, low: float = 0.0, high: float | None = None, *, strict_low=False,
                strict_high=True) -> None:  # fmt: skip
    """A finite number in [low, high) by default; strict_low excludes low, strict_high=False includes high."""
    import math

    if not _is_number(value) or not math.isfinite(value if isinstance(value, float) else _as_float(value)):
        raise _fail(name, f"{name} must be a finite number, got {value!r}")
    if high is None:
        if strict_low and value <= low:
            raise _fail(name, f"{name} must be greater than {low:g}, got {value}")
        if value < low:
            rule = "must not be negative" if low == 0 else f"must be at least {low:g}"
            raise _fail(name, f"{name} {rule}, got {value}")
        return
    below = value < low or (strict_low and value == low)
    above = value > high or (strict_high and value == high)
    if below or above:
        interval = f"{'(' if strict_low else '['}{low:g}, {high:g}{')' if strict_high else ']'}"
        raise _fail(name, f"{name} must be in {interval}, got {value}")


def check_choice(name: str, value: object, choices) -> None:
    if value not in choices:
        raise _fail(name, f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_types(cfg) -> None:
    """Every field of a config dataclass holds a value of its type (a JSON file can hold anything); the types
    are the annotations' real ones (`typing.get_type_hints`): `X | None` also takes None."""
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if value is None and len(args) < len(typing.get_args(hint)):
                continue
            if str in args[1:] and isinstance(value, str):  # `float | str`: a number or a word (--arch-lr auto)
                continue
            hint = args[0]
        origin = typing.get_origin(hint)
        if origin is typing.Literal:  # a choice: one of the values, of their type (True is not 1)
            choices = typing.get_args(hint)
            if not any(value == c and type(value) is type(c) for c in choices):
                raise _fail(f.name, f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
            continue
        if hint is bool and not isinstance(value, bool):
            raise _fail(f.name, f"{f.name} must be true or false, got {value!r}")
        if hint is str and not isinstance(value, str):
            raise _fail(f.name, f"{f.name} must be a string, got {value!r}")
        if hint is int and not (isinstance(value, int) and not isinstance(value, bool)):
            raise _fail(f.name, f"{f.name} must be a whole number, got {value!r}")
        if hint is float and not _is_number(value):
            raise _fail(f.name, f"{f.name} must be a number, got {value!r}")
        if origin is tuple:
            n = len(typing.get_args(hint))
            if not (isinstance(value, tuple | list) and len(value) == n and all(_is_number(v) for v in value)):
                raise _fail(f.name, f"{f.name} must be {n} numbers, got {value!r}")
        if origin is dict and not isinstance(value, dict):
            raise _fail(f.name, f"{f.name} must be a JSON object, got {value!r}")


def check_seed(value: object) -> None:
    check_int("seed", value, 0)
    if value >= 2**32:
        raise _fail("seed", f"seed must be below 2^32, got {value}")


def check_device(value: object, flag: str = "device") -> None:
    """auto, or a device that torch can parse and that exists on this machine."""
    if value == "auto":
        return
    import torch

    hint = "use auto, cpu, cuda, cuda:N or mps"
    try:
        if not isinstance(value, str):
            raise TypeError
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise _fail(flag, f"{flag} {value!r} is not a device; {hint}") from None
    if dev.type == "cpu":
        return
    backend = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None), "xpu": getattr(torch, "xpu", None)}
    module = backend.get(dev.type)
    if module is None:
        raise _fail(flag, f"{flag} {value} is not supported by bnas; {hint}")
    if not module.is_available():
        raise _fail(flag, f"{flag} {value} was asked for but this machine has no {dev.type} device; use {flag} cpu")
    count = module.device_count() if hasattr(module, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise _fail(
            flag,
            f"{flag} {value} does not exist: this machine has {count} {dev.type} device(s), {dev.type}:0 to "
            f"{dev.type}:{count - 1}",
        )


def check_not_file(name: str, value: str, what: str) -> None:
    """A directory option: it may not exist yet, but it must not be a regular file."""
    import os

    if os.path.exists(value) and not os.path.isdir(value):
        raise _fail(name, f"{name} {value} is a file, not a directory; give {what}")


def check_compile(value: str) -> None:
    if value == "off":
        return
    import torch._dynamo

    if not isinstance(value, str) or value not in torch._dynamo.list_backends(exclude_tags=()):
        raise _fail(
            "compile", f"compile must be off or a torch.compile backend (inductor, or eager to debug), got {value!r}"
        )


def check_output(name: str, path, directory: bool) -> None:
    """An output path (a directory or a file) that can be created: no file stands where a directory must be."""
    from pathlib import Path

    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        kind = "a directory" if path.is_dir() else "a file"
        raise _fail(name, f"{name} {path} is {kind}; give {'a directory' if directory else 'a file name'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise _fail(name, f"{name} {path}: {parent} is a file, not a directory")
            return


def did_you_mean(word: object, choices) -> str:
    """' (did you mean X or Y?)' for the closest of `choices` to a misspelt `word`, or ''."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=2)
    return f" (did you mean {' or '.join(close)}?)" if close else ""
