"""The adapter's card (limamono.json) is read and applied as the defaults of chat/serve/eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from limamono.core import format as fmt
from limamono.models import adapter_card
from limamono.samplers import get_preset

DEMO = Path(__file__).resolve().parents[1] / "examples" / "adapters" / "demo"


def write_card(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "limamono.json").write_text(json.dumps(fields))
    return folder


def test_the_demo_adapters_card():
    card = adapter_card.read_card(DEMO)
    assert card is not None
    assert (card.trigger, card.stop_strings, card.length_bounds, card.policy, card.preset) == (
        "card", ("###",), fmt.DEFAULT_LENGTH_BOUNDS, "training", "limamono")
    assert card.sampler_settings() == get_preset("limamono")
    assert card.notes == ()


def test_a_card_sets_trigger_stops_bounds_and_samplers(tmp_path):
    values = {**vars(get_preset("limamono")), "tfs": 0.5, "sampler_order": [6, 0, 1, 3, 4, 2, 5]}
    folder = write_card(tmp_path / "a", format_version=fmt.FORMAT_VERSION, trigger="preset",
                        stop_strings=["###", "THE END"], length_bounds=[5, 10, 20, 40, 80, 160],
                        sampler_preset={"name": "limamono", "values": values})
    chosen = adapter_card.defaults(folder)
    assert chosen.policy.trigger == "preset"
    assert chosen.policy.length_bounds == (5, 10, 20, 40, 80, 160)
    assert chosen.policy.stop_strings("Tom") == ["###", "THE END", "\nTom:"]
    assert chosen.samplers.tfs == 0.5 and chosen.samplers.rep_pen == 1.11
    assert chosen.notes == ()


def test_explicit_options_win_with_a_note(tmp_path):
    folder = write_card(tmp_path / "a", trigger="preset",
                        sampler_preset={"name": "limamono", "values": None})
    chosen = adapter_card.defaults(folder, preset="greedy", trigger="card",
                                   policy="sillytavern")
    assert (chosen.policy.name, chosen.policy.trigger, chosen.preset) == (
        "sillytavern", "card", "greedy")
    assert chosen.samplers == get_preset("greedy")
    assert chosen.notes == ("--policy sillytavern overrides the adapter's training",
                            "--trigger card overrides the adapter's preset",
                            "--preset greedy overrides the adapter's limamono")
    same = adapter_card.defaults(folder, trigger="preset")
    assert same.notes == ()  # the same value as the card's needs no note


def test_no_adapter_or_no_card_keeps_the_defaults(tmp_path):
    for folder in (None, tmp_path):
        chosen = adapter_card.defaults(folder)
        assert chosen.policy == adapter_card.PromptPolicy()
        assert (chosen.samplers, chosen.preset, chosen.notes) == (
            get_preset("limamono"), "limamono", ())


def test_a_custom_trigger_text_is_used(tmp_path):
    folder = write_card(tmp_path / "a", trigger="Write a story.", trigger_text="Write a story.")
    assert adapter_card.defaults(folder).policy.trigger == "Write a story."


def test_a_newer_card_is_read_with_a_note(tmp_path):
    folder = write_card(tmp_path / "a", format_version="limamono-9", trigger="card",
                        sampler_preset={"name": "limamono", "values": {"tfs": 0.5,
                                                                       "warp_drive": 3}})
    chosen = adapter_card.defaults(folder)
    assert chosen.samplers == get_preset("limamono")  # unknown values: the preset by name
    assert len(chosen.notes) == 1 and "'limamono-9' is newer" in chosen.notes[0]


@pytest.mark.parametrize("text,message", [
    ("{not json", "cannot be read"),
    ("[1, 2]", "must hold a JSON object"),
    (json.dumps({"length_bounds": [3, 2, 1, 4, 5, 6]}), "field 'length_bounds'"),
    (json.dumps({"stop_strings": "###"}), "field 'stop_strings'"),
    (json.dumps({"prompt_policy": "chat"}), "field 'prompt_policy'"),
])
def test_a_broken_card_names_the_file_and_field(tmp_path, text, message):
    (tmp_path / "limamono.json").write_text(text)
    with pytest.raises(adapter_card.AdapterCardError, match=message) as caught:
        adapter_card.read_card(tmp_path)
    assert str(tmp_path / "limamono.json") in str(caught.value)


def test_serve_takes_its_policy_and_samplers_from_the_adapter(tmp_path):
    from limamono.cli.serve_cmd import server_config

    folder = write_card(tmp_path / "a", trigger="preset", length_bounds=[5, 10, 20, 40, 80, 160],
                        sampler_preset={"name": "greedy", "values": None})
    config, notes = server_config(None, 4, None, [], 1.0, 64, str(folder))
    assert (config.prompt_policy.trigger, config.prompt_policy.length_bounds) == (
        "preset", (5, 10, 20, 40, 80, 160))
    assert config.sampler_settings() == get_preset("greedy")
    assert (config.adapter_name, notes) == ("a", ())
    config, notes = server_config("limamono", 4, None, [], 1.0, 64, str(folder),
                                  policy="sillytavern")
    assert config.sampler_settings() == get_preset("limamono")
    assert config.prompt_policy.name == "sillytavern"
    assert notes == ("--policy sillytavern overrides the adapter's training",
                     "--preset limamono overrides the adapter's greedy")
    with pytest.raises(ValueError, match="unknown preset"):
        server_config("warp", 4, None, [], 1.0, 64, "none")
