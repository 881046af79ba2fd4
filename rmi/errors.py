"""Error types whose message is one line naming the offending file (or record) and the problem."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input: a corrupt file, a malformed annotation, an empty expression...

    ``str(err)`` is ``"<where>: <problem>"`` on one line, so a log or a CLI can print it as is.
    """

    def __init__(self, where: str | Path, problem: str):
        self.where = str(where)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.where}: {self.problem}")


class ChecksumError(InputError):
    """A downloaded file whose digest differs from the configured one."""

    def __init__(self, url: str, algorithm: str, expected: str, actual: str):
        super().__init__(url, f"{algorithm} mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual
