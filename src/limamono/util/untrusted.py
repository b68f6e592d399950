"""Reading YAML and JSON from untrusted files with bounded work, and quoting their values.

Every file limamono reads (conversations, training configs, SillyTavern chats, card JSON)
comes through here, so one place decides what is too big or too deep:

- nesting deeper than ``MAX_DEPTH`` is refused while parsing (5,000 ``[`` in a file used to
  overflow Python's recursion);
- a YAML alias ("billion laughs") bomb is refused before anything walks it: the document
  may expand to at most ``MAX_VALUES`` values, or to no more than it holds without its
  aliases (a 342-byte file used to expand to gigabytes); a recursive alias is refused;
- a key given twice in one mapping is refused (which one is meant is ambiguous);
- JSON's ``NaN``/``Infinity`` are refused (they are not JSON, and no other tool reads them);
- a lone surrogate (``"\\ud800"`` escaped in JSON or YAML) is refused: it is not a character,
  no UTF-8 file, database or terminal can hold it, so it would only fail later (a JSON-style
  escaped pair such as ``"\\ud83d\\ude00"`` in YAML is read as the one character it means);
- a raw control character in a YAML file (``\\x01``, ESC, NUL: YAML allows them only
  escaped) is refused with its line and column.

Files are read through ``read_text`` (a regular file of at most a given size: a FIFO, a
device or a 1 GB file is refused before anything is read) or, line by line, ``iter_lines``
(any size, each line bounded), so memory stays bounded whatever the input:

- ``MAX_YAML_BYTES``: a YAML document cannot be streamed, and PyYAML needs about 80 times its
  size in memory and ~10 s a megabyte, so a bigger YAML file is refused by its size;
- ``MAX_LINE_BYTES``: the longest line of a line-based (JSONL) file.

Errors are ``UntrustedError`` with the 1-based line where known; callers add the file name
in their own error type. ``quote`` caps what an error message repeats of a value.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from typing import Any, BinaryIO

import yaml

#: Deepest nesting of mappings and lists (real files stay under 10).
MAX_DEPTH = 64
#: Most values a YAML document may expand to through aliases.
MAX_VALUES = 100_000
#: Longest quotation of a value in an error message, in characters.
QUOTE_CHARS = 60
#: Largest YAML file read, in bytes (see the module docstring).
MAX_YAML_BYTES = 2 * 2**20
#: Longest line of a JSONL file, in bytes.
MAX_LINE_BYTES = 16 * 2**20


#: A UTF-16 surrogate code point: never a character on its own.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: A high surrogate followed by a low one: a character escaped JSON's way, in YAML.
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


class UntrustedError(ValueError):
    """A file's text is refused; ``line`` is 1-based, or None when unknown."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(reason if line is None else f"line {line}: {reason}")


def surrogate_reason(text: str) -> str | None:
    """Why ``text`` cannot be kept, when it holds a lone surrogate (else None): the one
    wording of that refusal, with the code point and its character offset."""
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return (f"holds a lone surrogate \\u{ord(found.group()):04x} at character "
            f"{found.start() + 1} (not a character: UTF-8 cannot hold it)")


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


# --------------------------------------------------------------------------- files

def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


def _regular(handle: BinaryIO, path: str | os.PathLike[str]) -> os.stat_result:
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        raise UntrustedError(f"not a regular file ({_kind(info.st_mode)}), so it is not read")
    return info


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a plain file"


def _open(path: str | os.PathLike[str]) -> BinaryIO:
    """Open for reading without blocking on a FIFO (its kind is then refused)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    return os.fdopen(fd, "rb")


def read_text(path: str | os.PathLike[str], max_bytes: int, what: str = "file") -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes.

    The size is checked before reading (and the read is bounded, should the file grow), so
    a file over the limit is refused at once, whatever its size.

    Raises:
        OSError: the file cannot be opened (missing, unreadable).
        UntrustedError: not a regular file, over the limit, or not UTF-8.
    """
    with _open(path) as handle:
        size = _regular(handle, path).st_size
        data = handle.read(max_bytes + 1) if size <= max_bytes else b""
    check_size(max(size, len(data)), max_bytes, what)
    return decode_utf8(data)


def check_size(size: int, max_bytes: int, what: str = "file") -> None:
    """Refuse ``size`` bytes over ``max_bytes``; the one wording of that refusal.

    Raises:
        UntrustedError: ``the YAML file is 1024.0 MiB, over the limit of 2.0 MiB``.
    """
    if size > max_bytes:
        raise UntrustedError(too_big(size, max_bytes, what))


def too_big(size: int, max_bytes: int, what: str = "file") -> str:
    """The wording of a size refusal, for callers with their own error type."""
    return f"the {what} is {_mb(size)}, over the limit of {_mb(max_bytes)}"


def decode_utf8(data: bytes, line: int | None = None) -> str:
    """``data`` as UTF-8 (a leading BOM dropped).

    Raises:
        UntrustedError: not UTF-8, naming the offset of the first bad byte.
    """
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise UntrustedError(f"not UTF-8 text (byte {exc.start})", line) from None


def iter_lines(path: str | os.PathLike[str], max_line_bytes: int = MAX_LINE_BYTES,
               max_bytes: int | None = None, what: str = "file") -> Iterator[tuple[int, str]]:
    """The non-blank lines of a regular UTF-8 file as ``(1-based number, text)``, read one
    at a time (bounded memory at any size); ``\\n`` ends a line, a final ``\\r`` is dropped.

    Args:
        path: the file.
        max_line_bytes: the longest line allowed.
        max_bytes: when given, a bigger file is refused before its first line is read.
        what: the file as the size error names it.

    Raises:
        OSError: the file cannot be opened.
        UntrustedError: not a regular file, over ``max_bytes``, a line over
            ``max_line_bytes``, or not UTF-8 (with the line).
    """
    with _open(path) as handle:
        size = _regular(handle, path).st_size
        if max_bytes is not None:
            check_size(size, max_bytes, what)
        number = 0
        while True:
            raw = handle.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise UntrustedError(f"the line is longer than the limit of "
                                     f"{_mb(max_line_bytes)}", number)
            text = _decode_line(raw, number)
            if number == 1:
                text = text.removeprefix("\ufeff")
            if text.strip():
                yield number, text.rstrip("\r\n")


def _decode_line(raw: bytes, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UntrustedError(f"not UTF-8 text (byte {exc.start} of the line)", number) from None


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
            node = super().compose_node(parent, index)
            assert node is not None  # only compose_document's end of stream yields None
            return node
        finally:
            self._depth -= 1

    # types-PyYAML declares ``anchor`` as a dict; PyYAML passes the event's anchor string.
    def compose_mapping_node(self, anchor: str | None,  # type: ignore[override]  # stub
                             ) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)  # type: ignore[arg-type]  # same stub
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
    try:
        loader = _BoundedLoader(text)  # PyYAML checks the characters here
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text) from None
    try:
        node = loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text) from None
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


def _reader_error(exc: yaml.reader.ReaderError, text: str) -> UntrustedError:
    """A character YAML does not allow raw (a control character, U+FFFE...), with its line
    and column; PyYAML's own error says only the offset into the whole text."""
    position = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    code = exc.character if isinstance(exc.character, int) else 0
    return UntrustedError(f"not valid YAML: the character U+{code:04X} at column {column} "
                          "is not allowed raw in YAML (a control character? write it "
                          f"escaped in a double-quoted string, \"\\x{code:02x}\", or remove "
                          "it)" if code < 0x100 else
                          f"not valid YAML: the character U+{code:04X} at column {column} "
                          "is not allowed in YAML", line)


def _check_scalar(node: yaml.ScalarNode) -> None:
    """Read an escaped surrogate pair as its character; refuse a lone surrogate."""
    if _SURROGATE.search(node.value) is None:
        return
    value = _PAIR.sub(lambda m: m.group().encode("utf-16-le", "surrogatepass")
                      .decode("utf-16-le"), node.value)
    reason = surrogate_reason(value)
    if reason is not None:
        raise UntrustedError(f"the value {quote(value)} {reason}", node.start_mark.line + 1)
    node.value = value


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
        if isinstance(node, yaml.ScalarNode):
            _check_scalar(node)
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
    # Only an escape can put a surrogate in the value; the substring test spares the regex.
    if ("\\ud" in text or "\\uD" in text) and _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(value, text)
    return value


#: ``\uD800``..``\uDFFF`` escaped in JSON text (preceded by an even run of backslashes).
_SURROGATE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _refuse_lone_surrogates(value: Any, text: str) -> None:
    """Refuse a decoded JSON value holding a lone surrogate, naming the field (and the line
    of the first such escape); ``json`` joins escaped pairs, so what is left is lone."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, child in reversed(item.items()):
                where = f"{path}.{key}" if path else str(key)
                if (reason := surrogate_reason(key)) is not None:
                    raise UntrustedError(f"the key {quote(key)} {reason}", _escape_line(text))
                stack.append((child, where))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in reversed(list(enumerate(item))))
        elif isinstance(item, str) and (reason := surrogate_reason(item)) is not None:
            field = f"field {quote(path)}: " if path else ""
            raise UntrustedError(f"{field}the value {quote(item)} {reason}", _escape_line(text))


def _escape_line(text: str) -> int | None:
    """The line of the first lone surrogate escape in JSON text, when one can be told."""
    for found in _SURROGATE_ESCAPE.finditer(text):
        code, start = int(found.group()[-4:], 16), found.end() - 6
        after, before = text[found.end():found.end() + 6], text[max(0, start - 6):start]
        if code < 0xDC00 and re.fullmatch(r"\\u[dD][c-fC-F][0-9a-fA-F]{2}", after):
            continue  # a high surrogate with its low one: a pair
        if code >= 0xDC00 and re.fullmatch(r"\\u[dD][89abAB][0-9a-fA-F]{2}", before):
            continue
        return text.count("\n", 0, found.start()) + 1
    return None


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
