"""Reading YAML and JSON from untrusted files with bounded work, and quoting their values.

Every file limamono reads (conversations, training configs, SillyTavern chats, card JSON)
comes through here, so one place decides what is too big or too deep:

- nesting deeper than ``MAX_DEPTH`` is refused while parsing (5,000 ``[`` in a file used to
  overflow Python's recursion);
- a YAML alias ("billion laughs") bomb is refused before anything walks it: the document
  may expand to at most ``MAX_VALUES`` values, or to no more than it holds without its
  aliases (a 342-byte file used to expand to gigabytes); a recursive alias is refused;
- a key given twice in one mapping is refused (which one is meant is ambiguous);
- JSON's ``NaN``/``Infinity`` are refused (they are not JSON, and no other tool reads them).

Errors are ``UntrustedError`` with the 1-based line where known; callers add the file name
in their own error type. ``quote`` caps what an error message repeats of a value.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

#: Deepest nesting of mappings and lists (real files stay under 10).
MAX_DEPTH = 64
#: Most values a YAML document may expand to through aliases.
MAX_VALUES = 100_000
#: Longest quotation of a value in an error message, in characters.
QUOTE_CHARS = 60


class UntrustedError(ValueError):
    """A file's text is refused; ``line`` is 1-based, or None when unknown."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(reason if line is None else f"line {line}: {reason}")


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said when longer.

    The repr of a huge value is never built: containers are summarised by type and size.
    """
    if isinstance(value, (list, dict, tuple, set)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, int) and abs(value).bit_length() > 4 * limit:  # repr may refuse it
        return f"an integer of about {int(abs(value).bit_length() * 0.30103)} digits"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


# --------------------------------------------------------------------------- YAML

class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting and duplicate keys while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # Refused while scanning: the scanner looks ahead over every open '[' for a possible
        # key, so 5,000 of them would take a while before the composer saw the first.
        if self.flow_level >= MAX_DEPTH:
            raise UntrustedError(f"nested more than {MAX_DEPTH} levels deep",
                                 self.get_mark().line + 1)
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise UntrustedError(f"nested more than {MAX_DEPTH} levels deep",
                                     mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[str, int] = {}
        for key, _value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if key.value in seen:
                raise UntrustedError(f"duplicate key {quote(key.value)} (lines "
                                     f"{seen[key.value]} and {line}; which one is meant is "
                                     "ambiguous)", line)
            seen[key.value] = line
        return node


def _bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    # Python refuses to read (or print) integers of more than 4,300 digits, and nothing
    # limamono reads needs more than 64 bits; hex and binary would otherwise pass.
    if len(node.value) > 40:
        raise UntrustedError(f"the integer {quote(node.value)} is too long",
                             node.start_mark.line + 1)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)


def compose_yaml(text: str) -> yaml.Node | None:
    """The node tree of one YAML document (None when it is empty), checked for size.

    Raises:
        UntrustedError: invalid YAML, too deep, duplicate keys, or an alias bomb.
    """
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) from None
    finally:
        loader.dispose()
    if node is not None:
        _check_expansion(node)
    return node


def construct(node: yaml.Node | None) -> Any:
    """The Python value of a node from ``compose_yaml`` (safe types only).

    Raises:
        UntrustedError: a tag that has no safe meaning (``!!python/object`` and the like).
    """
    if node is None:
        return None
    loader = _BoundedLoader("")
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) from None
    except UntrustedError:
        raise
    except ValueError as exc:  # a date like 2024-13-45
        raise UntrustedError(f"not valid YAML: a value cannot be read "
                             f"({quote(str(exc).split(';')[0], 80)})") from None
    finally:
        loader.dispose()


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the bounds above.

    Raises:
        UntrustedError: see ``compose_yaml`` and ``construct``.
    """
    return construct(compose_yaml(text))


def _yaml_error(exc: yaml.YAMLError) -> UntrustedError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return UntrustedError(f"not valid YAML: {problem}",
                          mark.line + 1 if mark is not None else None)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it past the bounds (or into a cycle).

    Each distinct node is visited once (iteratively); its expanded size and depth are
    computed from its children's, so a bomb is measured without being expanded.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) when expanded
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            parts = [measured[id(child)] for child in _children(node)]
            values = 1 + sum(size for size, _ in parts)
            depth = 1 + max((d for _, d in parts), default=0)
            measured[key] = (values, depth)
            open_nodes.discard(key)
            if depth > MAX_DEPTH:
                raise UntrustedError(f"its aliases nest more than {MAX_DEPTH} levels deep",
                                     node.start_mark.line + 1)
            continue
        if key in measured:
            continue
        if key in open_nodes:
            raise UntrustedError("an alias refers to a value that contains it",
                                 node.start_mark.line + 1)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in measured)
    # A file without aliases may be as big as it is; aliases may not multiply it past this.
    values = measured[id(root)][0]
    if values > MAX_VALUES and values > len(measured):
        raise UntrustedError(f"its aliases expand it to {values} values, over the limit of "
                             f"{MAX_VALUES} (an alias bomb?)", root.start_mark.line + 1)


# --------------------------------------------------------------------------- JSON

def load_json(text: str, max_depth: int = MAX_DEPTH, *, allow_nan: bool = False) -> Any:
    """``json.loads`` refusing duplicate keys, nesting past ``max_depth`` and (unless
    ``allow_nan``, for files Python itself wrote) NaN/Infinity.

    Raises:
        UntrustedError: with the line of a syntax error.
    """
    constant = None if allow_nan else _no_constant
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise UntrustedError(f"not valid JSON: {exc.msg} (column {exc.colno})",
                             exc.lineno) from None
    except RecursionError:
        raise UntrustedError(f"nested too deeply (more than {max_depth} levels)") from None
    except ValueError as exc:  # raised by the two hooks
        raise UntrustedError(f"not valid JSON: {exc}") from None
    if depth_of(value) > max_depth:
        raise UntrustedError(f"nested more than {max_depth} levels deep")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {quote(key)} (which one is meant is ambiguous)")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def depth_of(value: Any) -> int:
    """Nesting depth of lists and dicts, iteratively (the value may be very deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest
