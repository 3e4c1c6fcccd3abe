"""ManifestIssue: one non-fatal validation error, always naming the file and the key to fix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError


@dataclass(frozen=True)
class ManifestIssue:
    """One problem found while loading configuration.

    `file` is the path as the loader was given it, `key` a dotted path inside that file
    (`agents.synthesizer[0].base_ref`; empty when the whole file is at fault), `reason` what is
    wrong, in words an operator can act on. Issues are collected, never raised, so one bad entry
    does not hide the rest of a file.
    """

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.reason}"


def join_key(parts: Sequence[str | int]) -> str:
    """`("agents", "critic", 0, "base_ref")` -> `agents.critic[0].base_ref`."""
    key = ""
    for part in parts:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key = f"{key}.{part}" if key else part
    return key


def issues_from_validation(
    file: str, error: ValidationError, prefix: Sequence[str | int] = ()
) -> list[ManifestIssue]:
    """One issue per pydantic error, keyed by the error's location under `prefix`."""
    issues: list[ManifestIssue] = []
    for detail in error.errors(include_url=False):
        location = [part for part in detail["loc"] if isinstance(part, str | int)]
        if detail["type"] == "extra_forbidden":
            reason = "unknown key"
        else:
            reason = str(detail["msg"]).removeprefix("Value error, ")
        issues.append(ManifestIssue(file, join_key([*prefix, *location]), reason))
    return issues
