"""Per-object errors.

Every problem found in a user's object is an :class:`ObjectError` naming the object (kind,
namespace, name), the field path and what was expected. Errors are values, collected per object,
so one malformed object never affects another: the controller turns them into Kubernetes Events,
the CLI prints them, the topology API lists them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True, order=True)
class ObjectError:
    ref: ObjectRef
    field: str
    message: str

    def __str__(self) -> str:
        where = f": {self.field}" if self.field else ""
        return f"{self.ref}{where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": self.ref.kind,
            "namespace": self.ref.namespace,
            "name": self.ref.name,
            "field": self.field,
            "message": self.message,
        }


class InvalidObject(Exception):
    """Raised while parsing one object; caught at the object boundary and kept as an error."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def describe(value: object) -> str:
    """A short rendering of a bad value for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
