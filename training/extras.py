"""What ``pip install -e '.[train]'`` adds, and the one-line error when it is missing.

The training extra installs scikit-learn, which holds the digits data set and fits the digits
judge. The server does not need it, so it is not a base dependency; without it, ``ddpm train``
and ``ddpm eval`` end in one line naming the command that installs it (exit 2), not a traceback.
"""

from __future__ import annotations

from model.config import ConfigError

TRAIN_EXTRA = "pip install -e '.[train]'"


class MissingExtra(ConfigError):
    """An optional package that this command needs is not installed."""


def missing_sklearn(what: str) -> MissingExtra:
    return MissingExtra(f"{what} needs scikit-learn, which is not installed; install the training extra: "
                        f"{TRAIN_EXTRA}")
