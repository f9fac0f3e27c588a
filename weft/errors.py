"""Errors that reach an operator: what went wrong, what to do next, the exit code."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the `weft` command; scripts may rely on them."""

    OK = 0
    FAILED = 1  # the operation ran and failed (a check failed, traffic had errors, ...)
    USAGE = 2  # bad command line or bad input file; nothing was changed
    NOT_ROOT = 3  # the operation needs root
    UNAVAILABLE = 4  # a dependency (kernel feature, controller, lab) is missing or not running
    CONFLICT = 5  # the thing already exists or is in the wrong state (e.g. the lab is already up)


class WeftError(Exception):
    """An error with an operator-facing hint; the CLI prints both and exits with `exit_code`."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(WeftError):
    """Bad input: a flag, a file, a field. Nothing was changed."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """An invalid configuration file; the message names the file, the field and what is expected."""

    def __init__(self, path: str, field: str, expected: str, got: object = None) -> None:
        got_text = "" if got is None else f", got {got!r}"
        super().__init__(
            f"{path}: field '{field}': expected {expected}{got_text}",
            hint=f"fix '{field}' in {path} and run the command again; nothing was applied",
        )
        self.path = path
        self.field = field


class NotRootError(WeftError):
    """The operation needs root privileges."""

    exit_code = ExitCode.NOT_ROOT

    def __init__(self, operation: str) -> None:
        super().__init__(
            f"{operation} needs root (it creates network namespaces, cgroups and eBPF programs)",
            hint="run it again with sudo",
        )


class UnavailableError(WeftError):
    """Something Weft depends on is missing or not running."""

    exit_code = ExitCode.UNAVAILABLE


class ConflictError(WeftError):
    """The target is already in the requested state or in one that forbids the operation."""

    exit_code = ExitCode.CONFLICT
