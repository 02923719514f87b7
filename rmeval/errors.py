"""One exception type per failure family.

The CLI turns any ``RmevalError`` into a single line on stderr and exit code 1; messages
must therefore name the file / tensor / field at fault and say what to do next.
"""

from __future__ import annotations

import os


class RmevalError(Exception):
    """Base class of every expected failure."""

    exit_code = 1


class UsageError(RmevalError):
    """Wrong combination of arguments (exit 2, like argparse)."""

    exit_code = 2


class ConfigError(RmevalError):
    """A pipeline config file is missing, malformed or incomplete."""


class StoreError(RmevalError):
    """A storage location cannot be listed, read or written."""


class AlreadyExistsError(StoreError):
    """An output is there already and the call was not asked to replace it (also: a
    no-clobber write lost a race to create a file).

    The library names the path only (``<path>: already exists``): how to replace it is the
    command's to say, with its own flag or config key (convert ``--overwrite``, run-one
    ``--force``, a pipeline's config). The CLI sets :attr:`hint`, which the message then
    ends with."""

    def __init__(
        self, path: str | os.PathLike, what: str = "already exists", hint: str | None = None
    ):
        self.path = os.fspath(path)
        self.what = what
        self.hint = hint
        super().__init__(self.path, what)

    def __str__(self) -> str:
        text = f"{self.path}: {self.what}"
        return f"{text}; {self.hint}" if self.hint else text


class NamingError(RmevalError):
    """A name does not follow the expected pattern, or is unsafe as a path."""


class CheckpointError(RmevalError):
    """An EasyLM checkpoint is malformed, incomplete or inconsistent."""


class ConvertError(RmevalError):
    """Conversion to Hugging Face format failed for a reason other than the input."""


class VerifyError(RmevalError):
    """The converted model does not reproduce the checkpoint's outputs."""


class EvalError(RmevalError):
    """RewardBench evaluation cannot run on the given model or data."""


class SpecError(RmevalError):
    """A Beaker spec template or rendered spec is invalid."""


class BackendError(RmevalError):
    """A backend (local pool, Beaker) failed to launch or report runs."""


class CollectError(RmevalError):
    """Metrics or feature files cannot be collected into the results table."""


class ResultsError(RmevalError):
    """The committed results table or its history cannot be written."""


class FitError(RmevalError):
    """The regressor cannot be fitted or reported from the given table."""


class CredentialsError(RmevalError):
    """Credentials given in the environment are malformed."""


class ReproduceError(RmevalError):
    """A published run cannot be re-scored (not published, or no model to re-score)."""
