"""SillyTavern presets: equal to the ones verified in a real SillyTavern, and SillyTavern's
formatting rules applied to them give exactly ``format.render``."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from limamono.cards import presets
from limamono.core import conversation as conv_mod
from limamono.core import format as fmt
from limamono.core.conversation import Conversation

ASSETS = Path(__file__).parent / "assets"
VERIFIED = "testdata/sillytavern/limamono-presets"


@pytest.fixture(scope="module")
def verified(shared_dir) -> Path:
    return shared_dir / VERIFIED


@pytest.mark.parametrize(("name", "build"), [
    ("Limamono.instruct.json", presets.instruct_preset),
    ("Limamono.context.json", presets.context_preset),
    ("Limamono.textgen.json", presets.textgen_preset),
    ("Limamono.master.json", presets.master_preset),
])
def test_generated_presets_equal_the_verified_ones(verified, name, build):
    """Equal but for the story string, which since issue 21 (D3) also holds the personality,
    persona and World Info; for a card without them it renders the verified bytes (below)."""
    assert _without_story(build()) == _without_story(json.loads((verified / name).read_text()))


def _without_story(preset: dict) -> dict:
    out = {k: _without_story(v) if isinstance(v, dict) else v for k, v in preset.items()}
    out.pop("story_string", None)
    return out


def test_story_string_renders_the_verified_prompt_for_a_plain_card(edda, verified):
    old = json.loads((verified / "Limamono.context.json").read_text())
    assert old["story_string"] != presets.story_string()
    instruct = presets.instruct_preset()
    assert (sillytavern_prompt(edda, instruct, presets.context_preset())
            == sillytavern_prompt(edda, instruct, old))


def test_export_writes_every_file_atomically(tmp_path, verified):
    written = presets.export(tmp_path / "st")
    assert sorted(p.name for p in written) == sorted([
        "Limamono.instruct.json", "Limamono.context.json", "Limamono.textgen.json",
        "Limamono.master.json", "chat_template.jinja"])
    for path in written[:4]:
        assert _without_story(json.loads(path.read_text())) == _without_story(
            json.loads((verified / path.name).read_text()))
    assert not [p for p in (tmp_path / "st").iterdir() if p.name.startswith(".")]


# --- SillyTavern 1.12.6's prompt assembly, as the reference (§4.2-4.3) describes it ---------

def _handlebars(template: str, params: dict[str, str]) -> str:
    """The subset of Handlebars the story string uses, with its standalone-line rule: a
    block tag alone on its line removes that line's newline (the trap the presets avoid)."""
    template = re.sub(r"(^|\n)[ \t]*(\{\{[#/][^}]*\}\})[ \t]*\n", r"\1\2", template)
    def block(m: re.Match) -> str:
        return m.group(2) if params.get(m.group(1)) else ""
    out = re.sub(r"\{\{#if (\w+)\}\}(.*?)\{\{/if\}\}", block, template, flags=re.S)
    return re.sub(r"\{\{(\w+)\}\}", lambda m: params.get(m.group(1), ""), out)


def sillytavern_prompt(conv: Conversation, instruct: dict, context: dict,
                       **card: str) -> str:
    """``card``: the story string's other parameters (personality, persona, wiBefore, ...)
    as SillyTavern sets them (``storyStringParams`` in public/script.js 3785-3799)."""
    params = {"char": conv.character.name, "user": conv.user.name,
              "description": conv.character.description, "scenario": conv.scenario, **card}
    story = _handlebars(context["story_string"], params).lstrip("\n")
    if instruct["wrap"] is not False:
        story += "\n"
    join = "\n" if instruct["wrap"] else ""
    history = []
    for m in conv.messages:
        is_user = m.role == "user"
        prefix = instruct["input_sequence" if is_user else "output_sequence"]
        suffix = instruct["input_suffix" if is_user else "output_suffix"]
        if not suffix and instruct["wrap"]:
            suffix = "\n"
        name = m.speaker(conv)
        prefix = prefix.replace("{{name}}", name) if instruct["macro"] else prefix
        history.append(join.join([prefix, f"{name}: {m.text}{suffix}"]))
    last = instruct["last_output_sequence"] or instruct["output_sequence"]
    return story + "".join(history) + join.join([last, f"{conv.character.name}:"])


def sillytavern_stop_strings(instruct: dict, user: str) -> list[str]:
    keys = ["stop_sequence", "input_sequence", "output_sequence", "first_output_sequence",
            "last_output_sequence", "system_sequence", "last_system_sequence"]
    out: list[str] = [f"\n{user}:"]  # names_as_stop_strings
    for key in keys:
        for part in instruct[key].split("\n"):
            if part.strip() and part not in out:
                out.append(("\n" + part) if instruct["wrap"] else part)
    return out


@pytest.fixture
def edda() -> Conversation:
    return conv_mod.load_yaml(ASSETS / "edda.yaml")


def test_sillytavern_formatting_with_our_presets_gives_render(edda, verified):
    prompt = sillytavern_prompt(edda, presets.instruct_preset(), presets.context_preset())
    assert prompt == fmt.render(edda, open_response=True, input_length="tiny")
    assert prompt == (verified / "expected/turn2_consistent.txt").read_text()
    first = replace(edda, messages=edda.messages[:2])
    assert sillytavern_prompt(first, presets.instruct_preset(), presets.context_preset()) == (
        verified / "expected/turn1.txt").read_text()


def test_only_history_length_modifiers_differ_from_a_fully_labelled_render(edda):
    labelled = fmt.label_lengths(edda)
    ours = fmt.render(labelled, open_response=True)
    st = sillytavern_prompt(labelled, presets.instruct_preset(), presets.context_preset())
    strip = re.compile(r" \(length = [a-z]+\)\n")
    assert strip.sub("\n", ours) == strip.sub("\n", st)
    assert ours != st  # the history labels are what SillyTavern cannot send


def test_a_standalone_if_block_would_lose_the_blank_line(edda):
    """Why the story string puts each newline inside its {{#if}}: the naive layout breaks."""
    naive = dict(presets.context_preset())
    # The block on lines of its own, and the blank line meant to come from "{{/if}}\n\n".
    naive["story_string"] = (fmt.TRIGGERS["card"] + "\n\n### Instruction:\n{{char}}\n"
                             "{{description}}\n{{#if scenario}}\nScenario: {{scenario}}\n"
                             "{{/if}}\n")
    prompt = sillytavern_prompt(edda, presets.instruct_preset(), naive)
    assert "Scenario: A courier knocks during a storm.\n### Response:" in prompt
    assert prompt != fmt.render(edda, open_response=True, input_length="tiny")


def test_stop_strings_sillytavern_sends(verified):
    body = json.loads((verified / "captured/kcpp_Limamono_turn2_body.json").read_text())
    assert sillytavern_stop_strings(presets.instruct_preset(), "Corin") == body["stop"]
    assert set(fmt.stop_strings("Corin")) <= set(body["stop"])


def test_preset_trigger_variant():
    assert presets.story_string("preset").startswith(fmt.TRIGGERS["preset"] + "\n\n")
