"""`limamono lint`: check conversations, prose and cards against the house style."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.text import Text

from limamono.cli.common import EXIT_BAD_INPUT, EXIT_OK, EXIT_PROBLEMS, err, fail, out
from limamono.style.convert import DEFAULT_MAX_SOUND_WORDS

if TYPE_CHECKING:
    from limamono.cli.style_files import FileReport

# One paragraph per string: the help formatter rewraps lines, so no hard line breaks inside.
_LINT_HELP = "\n\n".join([
    "Check files against the Limamono house style (SPEC section 3).",
    "PATH may be files or folders (searched recursively, hidden entries skipped). Conversation "
    "files (.yaml, .yml, .jsonl) are linted message by message, with the speakers' names from "
    "the file; .txt files as prose (or, when a line starts with 'Scenario:', as a character "
    "sheet: typography and marker rules only); cards (.png, .json) on their greetings (all "
    "rules) and sheet fields (typography and marker rules).",
    "Output: one line per issue, 'file:message N:offset RULE severity message' (N is the "
    "0-based index, as in messages[N]; .txt files show line:column; cards show the field), or "
    "JSON with --json. Exit code 0 when clean, 1 when issues were found, 2 when a file could "
    "not be read or written (the other files are still reported).",
    "--fix applies the safe fixes only (curly quotes, the ellipsis character, spaces before "
    "punctuation, repeated spaces) to message texts and .txt files, and writes each file "
    "atomically, only if it parsed. YAML conversations are patched in place, so comments are "
    "kept; when that is not possible the file is rewritten from its data and comments are NOT "
    "kept (the output says so). Cards are never modified. See all rules with --list-rules.",
])


def lint_cmd(
    paths: list[Path] | None = typer.Argument(None, metavar="PATH...", show_default=False,
                                              help="Files or folders to lint."),
    fix: bool = typer.Option(False, "--fix", help="Apply the safe fixes and write the files "
                             "(atomically; YAML comments kept where possible)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report instead of lines."),
    rules: str | None = typer.Option(None, "--rules", help="Comma-separated rule ids or names "
                                     "to run (default: all)."),
    ignore: str | None = typer.Option(None, "--ignore", help="Comma-separated rule ids or "
                                      "names to skip."),
    max_sound_words: int = typer.Option(
        DEFAULT_MAX_SOUND_WORDS, "--max-sound-words", min=1,
        help="Asterisk spans longer than this many words are actions (LM030)."),
    fail_on: str = typer.Option("warning", "--fail-on", help="'warning': any issue exits 1; "
                                "'error': only errors do."),
    list_rules: bool = typer.Option(False, "--list-rules", help="List the rules and exit."),
) -> None:
    """Check files against the house style (full text: ``_LINT_HELP``)."""
    from limamono.cli.style_files import iter_files, lint_file
    from limamono.style import RULES, StyleConfig, select_rules

    if list_rules:
        for rule in RULES.values():
            fixable = " (fixable)" if rule.fixable else ""
            out.print(f"{rule.id} {rule.name} {rule.severity}{fixable}: {rule.description}",
                      markup=False, emoji=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_OK)
    if not paths:
        fail("give at least one PATH (a file or folder), or --list-rules")
    if fail_on not in ("warning", "error"):
        fail(f"--fail-on must be 'warning' or 'error', got {fail_on!r}")
    try:
        chosen = select_rules(_split(rules) if rules else None)
        skipped = set(select_rules(_split(ignore))) if ignore else set()
    except ValueError as exc:
        fail(str(exc))
    config = StyleConfig(max_sound_words=max_sound_words)
    chosen = [r for r in chosen if r not in skipped]
    reports = [lint_file(p, fix=fix, rules=chosen, config=config) for p in iter_files(paths)]
    if as_json:
        _print_json(reports)
    else:
        _print_lines(reports)
    raise typer.Exit(_exit_code(reports, fail_on))


def _split(value: str) -> list[str]:
    return [v for v in (part.strip() for part in value.split(",")) if v]


def _exit_code(reports: list[FileReport], fail_on: str) -> int:
    if any(r.error for r in reports):
        return EXIT_BAD_INPUT
    levels = ("error",) if fail_on == "error" else ("error", "warning")
    if any(f.issue.severity in levels for r in reports for f in r.findings):
        return EXIT_PROBLEMS
    return EXIT_OK


def _print_lines(reports: list[FileReport]) -> None:
    colours = {"error": "bold red", "warning": "yellow"}
    for report in reports:
        if report.error:
            err.print(Text.assemble(("error:", "bold red"), f" {report.path}: {report.error}"),
                      highlight=False, soft_wrap=True)
        if report.note:
            err.print(Text(f"{report.path}: {report.note}"), highlight=False, soft_wrap=True)
        if report.fixed:
            err.print(Text(f"{report.path}: fixed {report.fixed} issue(s)"), highlight=False,
                      soft_wrap=True)
        for finding in report.findings:
            item = finding.issue
            line = Text.assemble(f"{report.path}:{finding.location()} ", (item.rule, "bold"),
                                 " ", (item.severity, colours[item.severity]),
                                 f" {item.message}")
            out.print(line, soft_wrap=True, highlight=False)
    err.print(Text(_summary(_counts(reports))), highlight=False, soft_wrap=True)


def _print_json(reports: list[FileReport]) -> None:
    data = {"files": [r.to_dict() for r in reports], "summary": _counts(reports)}
    # A Text object is printed verbatim: no markup, emoji codes or highlighting in the JSON.
    out.print(Text(json.dumps(data, indent=2, ensure_ascii=False)), highlight=False,
              soft_wrap=True)


def _counts(reports: list[FileReport]) -> dict[str, int]:
    findings = [f for r in reports for f in r.findings]
    errors = sum(f.issue.severity == "error" for f in findings)
    return {"files": len(reports), "issues": len(findings), "errors": errors,
            "warnings": len(findings) - errors, "fixed": sum(r.fixed for r in reports),
            "unusable": sum(1 for r in reports if r.error),
            "skipped": sum(1 for r in reports if r.kind is None and not r.error)}


def _summary(counts: dict[str, int]) -> str:
    parts = [f"{counts['issues']} issue(s) ({counts['errors']} error(s), {counts['warnings']} "
             f"warning(s)) in {counts['files']} file(s)"]
    if counts["fixed"]:
        parts.append(f"{counts['fixed']} fixed")
    if counts["unusable"]:
        parts.append(f"{counts['unusable']} file(s) unreadable or unwritable")
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} skipped")
    return "; ".join(parts)


def register(app: typer.Typer) -> None:
    """Add `limamono lint` to the CLI."""
    app.command("lint", help=_LINT_HELP)(lint_cmd)
