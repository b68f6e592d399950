"""The user docs are true to the CLI: every `limamono ...` command in README.md and docs/*.md
names a real command and real options, and every relative link resolves.

Commands are read from fenced and indented code blocks and from inline code spans. Inline
spans may be sketches (`card show/convert`, `[--open]`, `PATH...`), so they are checked for
names only; a command on a code-block line of its own is parsed whole by the real parser
(required arguments, option values, numbers).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer._click.exceptions import UsageError  # Typer 0.29 brings its own click

from limamono.cli import app
from limamono.train.config import FIELDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ROOT_COMMAND: Any = typer.main.get_command(app)

#: Placeholders the docs use for "any command" and "any config key".
_PLACEHOLDERS = {"COMMAND", "--key"}
#: Shell words that end a command (pipes, redirections, background, chaining).
_ENDS = {"|", "||", "&&", "&", ";", ">", ">>", "2>", "2>&1", "<"}
_INLINE = re.compile(r"(?<!`)`(limamono [^`]+)`(?!`)")
_PROMPT = re.compile(r"^\s*(?:\$\s+)?(?:\S+=\S+\s+)*(?:\S*/)?limamono\s")


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    words: tuple[str, ...]  # after `limamono`
    whole: bool  # a code-block line: parse it with the real parser


def _code_lines(text: str) -> list[tuple[int, str]]:
    """Lines inside fenced blocks and indented (4-space, after a blank line) blocks, with
    backslash continuations joined."""
    lines = text.split("\n")
    found: list[tuple[int, str]] = []
    fenced = False
    indented = False
    pending: tuple[int, str] | None = None
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            pending = None
            continue
        blank_before = number >= 2 and not lines[number - 2].strip()
        if not fenced:
            if line.startswith("    ") and (indented or blank_before) \
                    and not line.lstrip().startswith(("- ", "|", "* ")):
                indented = True
            elif line.strip():
                indented = False
        if not (fenced or indented):
            continue
        if pending is not None:
            pending = (pending[0], pending[1] + " " + line.strip())
        else:
            pending = (number, line)
        if pending[1].rstrip().endswith("\\"):
            pending = (pending[0], pending[1].rstrip()[:-1])
            continue
        found.append(pending)
        pending = None
    return found


def _words_after_limamono(text: str) -> tuple[str, ...] | None:
    """The shell words of the first ``limamono`` command in ``text`` (None: there is none)."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        words = text.split()
    for i, word in enumerate(words):
        if word == "limamono" or word.endswith("/limamono"):
            rest = []
            for w in words[i + 1:]:
                if w in _ENDS or w.startswith((">", "2>")):
                    break
                rest.append(w)
            return tuple(rest)
    return None


def doc_commands() -> list[DocCommand]:
    commands = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT)
        for number, line in _code_lines(text):
            if "limamono" not in line:
                continue
            for part in re.split(r"\s(?:\|\||&&|\||;)\s", line):
                if _PROMPT.match(part):
                    words = _words_after_limamono(part)
                    if words:
                        commands.append(DocCommand(f"{name}:{number}", words, True))
        for number, line in enumerate(text.split("\n"), 1):
            for match in _INLINE.finditer(line):
                words = _words_after_limamono(match.group(1))
                if words and not words[0].startswith(("read", "writes", "serves")):
                    commands.append(DocCommand(f"{name}:{number}", words, False))
    return commands


def _expand(words: tuple[str, ...]) -> list[list[str]]:
    """Sketch notation to plain words: `[--open]` -> `--open`, `PATH...` dropped, and
    `show/convert` as two commands."""
    plain = [w.strip("[]") for w in words]
    plain = [w for w in plain if w and not w.endswith("...") and w != "|"]
    if len(plain) >= 2 and "/" in plain[1] and not plain[1].startswith(("-", ".", "/")):
        return [[plain[0], sub, *plain[2:]] for sub in plain[1].split("/")]
    if plain and "/" in plain[0] and not plain[0].startswith(("-", ".", "/")):
        return [[sub, *plain[1:]] for sub in plain[0].split("/")]
    return [plain]


def _resolve(words: list[str]) -> tuple[Any, list[str], list[str]]:
    """(command, its path, the remaining words); raises AssertionError for a bad name."""
    command = ROOT_COMMAND
    path: list[str] = []
    rest = [w for w in words if w not in _PLACEHOLDERS]
    while rest and rest[0] in ("-v", "--verbose"):
        rest.pop(0)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"no command `limamono {' '.join([*path, name])}`"
        command = command.commands[name]
        path.append(name)
    return command, path, rest


def _option_names(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def check_command(words: tuple[str, ...], whole: bool) -> None:
    for plain in _expand(words):
        command, path, rest = _resolve(plain)
        known = _option_names(command)
        config_keys = (command.context_settings or {}).get("allow_extra_args", False)
        for word in rest:
            if word in _PLACEHOLDERS or not word.startswith("-") or word == "-" \
                    or re.fullmatch(r"-\d.*", word):
                continue
            name = word.split("=", 1)[0]
            if name in known:
                continue
            assert config_keys and name.startswith("--") \
                and name[2:].replace("-", "_") in FIELDS, \
                f"`limamono {' '.join(path)}` has no option {name}"
        if whole and not hasattr(command, "commands"):
            try:
                command.make_context(" ".join(path), list(rest)).close()
            except UsageError as error:
                raise AssertionError(f"`limamono {' '.join(plain)}` does not parse: "
                                     f"{error.format_message()}") from None


COMMANDS = doc_commands()


def test_the_docs_show_many_commands():
    """Not vacuous: the reader finds the commands the docs are known to show."""
    shown = {" ".join(c.words) for c in COMMANDS}
    assert len(COMMANDS) >= 100
    assert sum(c.whole for c in COMMANDS) >= 40
    assert "chat --chat 1" in shown
    assert "export gguf --adapter runs/first/adapter --quant q4_k_m -o mira-q4.gguf" in shown
    assert "card generate --name Nessa Crane --hint Occupation: ferry pilot -o nessa.png" \
        in shown


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where} {' '.join(c.words)}")
def test_documented_command_parses(command: DocCommand) -> None:
    check_command(command.words, command.whole)


@pytest.mark.parametrize("words, whole, message", [
    (("chats", "nuke"), False, "no command `limamono chats nuke`"),
    (("serve", "--paralel", "4"), False, "`limamono serve` has no option --paralel"),
    (("train", "run.yaml", "--lora-rank", "16"), False,
     "`limamono train` has no option --lora-rank"),
    (("card", "show/burn", "x.png"), False, "no command `limamono card burn`"),
])
def test_the_checker_catches_bad_commands(words: tuple[str, ...], whole: bool,
                                          message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_command(words, whole)


def test_the_checker_parses_whole_commands() -> None:
    check_command(("train", "run.yaml", "--lora-r", "16"), True)
    with pytest.raises(AssertionError, match="valid integer"):
        check_command(("generate", "--max-tokens", "lots"), True)
    with pytest.raises(AssertionError, match=r"Missing option .--data."):
        check_command(("eval", "--adapter", "none"), True)
    check_command(("eval", "--adapter", "none"), False)  # a sketch: names only


def _all_commands(command: Any = ROOT_COMMAND) -> list[Any]:
    found = [command]
    for sub in getattr(command, "commands", {}).values():
        found += _all_commands(sub)
    return found


def test_help_text_survives_rich_markup() -> None:
    """Typer renders help as Rich markup, which silently drops what looks like a tag (the
    serve --parallel help lost its "[default: 4]" so): every help text prints in full."""
    from rich.text import Text

    texts = [(c.name, c.help or "") for c in _all_commands()]
    texts += [(f"{c.name} {p.opts[0]}", p.help or "") for c in _all_commands()
              for p in c.params if getattr(p, "help", None)]
    assert len(texts) > 200
    for where, text in texts:
        assert Text.from_markup(text).plain == text.replace("\\[", "["), where
    parallel = next(p for p in ROOT_COMMAND.commands["serve"].params
                    if "--parallel" in p.opts)
    assert Text.from_markup(parallel.help).plain.endswith("[default: 4]")


# Defaults stated in the docs' option tables -------------------------------------------


def _table_rows(path: Path, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with ``header``."""
    rows: list[list[str]] = []
    inside = False
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith(header):
            inside = True
            continue
        if inside and not line.startswith("|"):
            if rows:
                break
            continue
        if inside and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def _value(text: str) -> Any:
    """A default as the docs write it: `x`, 4, 0.5, true, unset; None when it is prose."""
    text = text.strip().strip("`")
    if text in ("true", "false"):
        return text == "true"
    if text == "unset":
        return None
    try:
        return float(text)
    except ValueError:
        pass
    return text if re.fullmatch(r"[\w.-]+", text) else ...


def _same(stated: Any, actual: Any) -> bool:
    if stated == "none":  # no value given: None, or an empty repeatable option
        return actual is None or actual == []
    if isinstance(actual, bool) and stated in ("on", "off"):  # a --flag/--no-flag pair
        return stated == ("on" if actual else "off")
    if isinstance(stated, float) and not isinstance(actual, bool):
        return isinstance(actual, (int, float)) and float(actual) == stated
    return bool(stated == actual)


def test_serve_option_defaults_in_the_sillytavern_guide() -> None:
    from limamono.cli.serve_cmd import DEFAULT_PARALLEL

    params = {o: p for p in ROOT_COMMAND.commands["serve"].params for o in p.opts}
    rows = _table_rows(ROOT / "docs" / "SILLYTAVERN.md", "| option | default |")
    checked = 0
    for row in rows:
        options = re.findall(r"`(--[a-z-]+)`", row[0].split("(")[0])
        defaults = [_value(d) for d in row[1].split(", ")]
        assert options, row
        for option in options:
            assert option in params, f"SILLYTAVERN.md: serve has no {option}"
        if len(defaults) != len(options) or ... in defaults:
            continue  # prose ("the model's", "none"): read by eye
        for option, stated in zip(options, defaults, strict=True):
            actual = params[option].default
            actual = DEFAULT_PARALLEL if option == "--parallel" else actual
            assert _same(stated, actual), f"SILLYTAVERN.md: {option} default {stated!r}, " \
                f"code {actual!r}"
            checked += 1
    assert checked >= 12


def test_training_config_defaults_in_the_training_guide() -> None:
    from limamono.train.config import TrainConfig

    defaults = TrainConfig()
    rows = _table_rows(ROOT / "docs" / "TRAINING.md", "| key | default |")
    checked = 0
    for row in rows:
        keys = [k.strip() for k in row[0].split(",")]
        stated = [_value(d) for d in row[1].split(", ")]
        for key in keys:
            assert key in FIELDS, f"TRAINING.md: no config key {key}"
        if ... in stated or len(stated) not in (1, len(keys)):
            continue  # prose (the target modules, bf16's rule): read by eye
        for key, value in zip(keys, stated * len(keys) if len(stated) == 1 else stated,
                              strict=True):
            actual = getattr(defaults, key)
            assert _same(value, actual), f"TRAINING.md: {key} default {value!r}, " \
                f"code {actual!r}"
            checked += 1
    assert checked >= 20


# Links -----------------------------------------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in
            re.finditer(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)}


def test_slug_matches_github() -> None:
    assert _slug("Adapters from the client: an A/B test") == "adapters-from-the-client-an-ab-test"
    assert _slug("### QLoRA (`load_in_4bit`)".lstrip("# ")) == "qlora-load_in_4bit"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (doc.parent / file).resolve() if file else doc
        assert linked.exists(), f"{doc.name}: link to missing {target}"
        if anchor:
            assert anchor in _anchors(linked), f"{doc.name}: no heading for #{anchor}"
