"""Reading the YAML and JSON documents users hand us, within stated limits.

Every file simmesh reads from a user goes through here: manifests, ``mesh.yaml``,
``scenario.yaml``, ``--set`` values, the proxy's ``--config-file`` and the configs it receives
from the controller. A document that breaks a limit is a :class:`DocumentError` naming the file
(and the line, where there is one) and what was expected, on one line; nothing is half-read.

The limits (:class:`Limits`, defaults in docs/security.md):

- **size**: files larger than ``max_bytes`` are refused before they are read; only regular
  files are read (a directory or a FIFO named ``scenario.yaml`` is an error, never a hang);
- **nesting**: collections nested deeper than ``max_depth`` are refused while the YAML is being
  composed, before anything recursive runs (Python's own recursion limit is never reached);
- **aliases**: YAML anchors and aliases share one node between several places, so a 1 KB file
  can stand for billions of nodes (an "anchor bomb"), which every consumer that walks the
  document (hashing, copying, parsing) pays for. The composed node graph is measured before it
  is constructed: its size with every alias expanded must stay within ``max_nodes``, and what
  aliases add within ``max_alias_nodes``; an alias inside its own anchor (a cycle) is refused;
- **depth, in the C parser**: libyaml's own loader (``CSafeLoader``, used when PyYAML was built
  with it: several times faster) composes in C, so there nesting is checked on the composed
  graph, before anything is constructed, and libyaml's own limit (1,000) is reported the same
  way;
- **numbers**: NaN and infinities (``.nan``, ``.inf``, ``NaN``, ``1e999``) are refused: no field
  of ours means them, and they break comparisons downstream; integers longer than Python's
  digit limit are refused with a clear message instead of a ValueError.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 16 * 1024 * 1024
    max_depth: int = 100
    max_nodes: int = 1_000_000  # per file, with every alias expanded
    max_alias_nodes: int = 100_000  # per file, nodes reached through aliases


DEFAULT_LIMITS = Limits()
# MeshConfigs are generated, not written by hand, and grow with the cluster (about 2 KB per
# Service): larger files and more nodes are fine, anchors are not expected at all.
CONFIG_LIMITS = Limits(max_bytes=256 * 1024 * 1024, max_nodes=50_000_000, max_alias_nodes=0)


class DocumentError(ValueError):
    """A document that cannot be read within the limits; ``str()`` is one line."""


class _Limit(Exception):
    def __init__(self, message: str, node: Node | None = None) -> None:
        where = ""
        if node is not None and node.start_mark is not None:
            where = f"line {node.start_mark.line + 1}: "
        super().__init__(where + message)


def one_line(text: object, width: int = 200) -> str:
    return " ".join(str(text).split())[:width]


# -- files ------------------------------------------------------------------------------------


def read_bytes(path: Path, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """A regular file's bytes, refused when larger than ``limits.max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise DocumentError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise DocumentError(f"{path}: is a directory, expected a file")
        if not stat.S_ISREG(info.st_mode):
            raise DocumentError(f"{path}: not a regular file")
        if info.st_size > limits.max_bytes:
            raise DocumentError(
                f"{path}: {info.st_size} bytes, larger than the limit of {limits.max_bytes}"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limits.max_bytes + 1)
    except OSError as exc:
        raise DocumentError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limits.max_bytes:
        raise DocumentError(f"{path}: larger than the limit of {limits.max_bytes} bytes")
    return data


# -- YAML -------------------------------------------------------------------------------------


def _finite_float(loader: Any, node: ScalarNode) -> float:
    """Floats, but no NaN or infinities."""
    value = yaml.constructor.SafeConstructor.construct_yaml_float(loader, node)
    if not math.isfinite(value):
        raise _Limit(f"{node.value!r}: NaN and infinite numbers are not accepted", node)
    return value


def _bounded_int(loader: Any, node: ScalarNode) -> int:
    """Integers, with a clear message for ones too long for Python."""
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    except ValueError:
        raise _Limit(f"an integer of {len(node.value)} digits is too long", node) from None


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting while composing and non-finite floats."""

    limits: Limits = DEFAULT_LIMITS
    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > self.limits.max_depth:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                line = mark.line + 1 if mark is not None else 0
                raise _Limit(f"line {line}: nested deeper than {self.limits.max_depth} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # The scanner looks ahead up to 1024 characters at a cost that grows with the flow
        # level: refusing deep ``[[[[`` here keeps that bounded too.
        if self.flow_level >= self.limits.max_depth:
            line = self.line + 1
            raise _Limit(f"line {line}: nested deeper than {self.limits.max_depth} levels")
        super().fetch_flow_collection_start(TokenClass)


_Loader.add_constructor("tag:yaml.org,2002:float", _finite_float)
_Loader.add_constructor("tag:yaml.org,2002:int", _bounded_int)

_CLoader: Any = None
if getattr(yaml, "__with_libyaml__", False):

    class _FastLoader(yaml.CSafeLoader):
        """libyaml's scanner, parser and composer; our constructors for numbers."""

        limits: Limits = DEFAULT_LIMITS

    _FastLoader.add_constructor("tag:yaml.org,2002:float", _finite_float)
    _FastLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)
    _CLoader = _FastLoader


class _Measure:
    """The size of a composed node graph with aliases expanded, without expanding them."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.sizes: dict[int, int] = {}
        self.open: set[int] = set()
        self.total = 0
        self.aliased = 0

    def document(self, node: Node) -> None:
        self.total += self.size(node, 1)
        self._check(node)

    def _check(self, node: Node) -> None:
        if self.total > self.limits.max_nodes:
            raise _Limit(f"more than {self.limits.max_nodes} nodes once aliases are expanded")
        if self.aliased > self.limits.max_alias_nodes:
            raise _Limit(
                f"YAML aliases expand to more than {self.limits.max_alias_nodes} nodes "
                "(an anchor bomb?)",
                node,
            )

    def size(self, node: Node, depth: int) -> int:
        key = id(node)
        known = self.sizes.get(key)
        if known is not None:  # a node seen before: an alias to it
            self.aliased += known
            self._check(node)
            return known
        if key in self.open:
            raise _Limit("a YAML alias refers to its own anchor (a cycle)", node)
        if isinstance(node, ScalarNode):
            self.sizes[key] = 1
            return 1
        if depth > self.limits.max_depth:
            raise _Limit(f"nested deeper than {self.limits.max_depth} levels", node)
        self.open.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            for item in node.value:
                total += self.size(item, depth + 1)
        elif isinstance(node, MappingNode):
            for name, value in node.value:
                total += self.size(name, depth + 1) + self.size(value, depth + 1)
        self.open.discard(key)
        self.sizes[key] = total
        if total > self.limits.max_nodes:
            raise _Limit(f"more than {self.limits.max_nodes} nodes once aliases are expanded")
        return total


def _yaml_documents(data: bytes | str, limits: Limits) -> Iterator[Any]:
    loader = (_CLoader or _Loader)(data)
    loader.limits = limits
    measure = _Measure(limits)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            measure.document(node)
            yield loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml_all(data: bytes | str, *, name: str, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """Every document of a YAML (or JSON) stream; None for empty documents."""
    try:
        return list(_yaml_documents(data, limits))
    except _Limit as exc:
        raise DocumentError(f"{name}: {exc}") from None
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(exc):  # libyaml's own limit, far beyond ours
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise DocumentError(
                f"{name}: {where}nested deeper than {limits.max_depth} levels"
            ) from None
        raise DocumentError(f"{name}: not valid YAML: {one_line(exc)}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DocumentError(f"{name}: not valid YAML: {one_line(exc)}") from None
    except RecursionError:
        raise DocumentError(f"{name}: nested too deeply") from None


def load_yaml(data: bytes | str, *, name: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The one document of a YAML stream (None when empty)."""
    docs = load_yaml_all(data, name=name, limits=limits)
    if len(docs) > 1:
        raise DocumentError(f"{name}: expected one YAML document, found {len(docs)}")
    return docs[0] if docs else None


def read_yaml(path: Path, limits: Limits = DEFAULT_LIMITS) -> Any:
    return load_yaml(read_bytes(path, limits), name=str(path), limits=limits)


def read_yaml_all(path: Path, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    return load_yaml_all(read_bytes(path, limits), name=str(path), limits=limits)


# -- JSON -------------------------------------------------------------------------------------


def _no_constant(text: str) -> Any:
    raise _Limit(f"{text}: NaN and infinite numbers are not accepted")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Limit(f"{text[:20]}: NaN and infinite numbers are not accepted")
    return value


def load_json(data: bytes | str, *, name: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """A JSON document within ``limits`` (size, nesting, node count; no NaN or infinities)."""
    if len(data) > limits.max_bytes:
        raise DocumentError(f"{name}: larger than the limit of {limits.max_bytes} bytes")
    try:
        doc = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
        _check_json(doc, limits)
    except _Limit as exc:
        raise DocumentError(f"{name}: {exc}") from None
    except RecursionError:
        raise DocumentError(f"{name}: nested deeper than {limits.max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, too-long integers
        raise DocumentError(f"{name}: not valid JSON: {one_line(exc)}") from None
    return doc


def _check_json(doc: Any, limits: Limits) -> None:
    """Nesting depth and node count, iteratively (the decoder has already recursed)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    nodes = 1
    while stack:
        item, depth = stack.pop()
        if depth > limits.max_depth:
            raise _Limit(f"nested deeper than {limits.max_depth} levels")
        if isinstance(item, dict):
            values: Any = item.values()
            nodes += 2 * len(item)
        elif isinstance(item, list):
            values = item
            nodes += len(item)
        else:
            continue
        stack.extend((v, depth + 1) for v in values if isinstance(v, dict | list))
    if nodes > limits.max_nodes:
        raise _Limit(f"more than {limits.max_nodes} nodes")
