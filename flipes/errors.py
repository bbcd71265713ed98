"""The one exception type for user mistakes: options, config files, env ids, plug-ins."""

from __future__ import annotations


class UsageError(ValueError):
    """A mistake in how flipes was called, not a bug: the command line prints it as one line,
    ``flipes: error: <option>: <what is wrong>; <what to do>``, and exits with status 2.

    Args:
        option: the option at fault as a user writes it (``--lr``, ``--config run.toml``).
        problem: what is wrong, with the offending value.
        fix: what to do instead.
    """

    def __init__(self, option: str, problem: str, fix: str = "") -> None:
        self.option, self.problem, self.fix = option, problem, fix
        super().__init__(f"{option}: {problem}" + (f"; {fix}" if fix else ""))


class StorageError(RuntimeError):
    """A file of a run cannot be written (a full disk, no permission): the command line prints it as
    one line naming the file and what is still good, and exits with status 1."""


class EqualFitnessWarning(UserWarning):
    """Every member of a generation had the same fitness, so its ES gradient was zero: the model was
    likely evaluated outside ``with es.population()`` (every member is then the mean network), or σ
    is too small for the fitness to tell members apart. Warned once per FlipES; a sparse reward may
    tie a population legitimately (``warnings.simplefilter("ignore", EqualFitnessWarning)``)."""
