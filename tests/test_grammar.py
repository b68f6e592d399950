"""Grammars and JSON schemas (issue 21): llama.cpp's grammar sampler as a mask before
limamono's chain, per stream, with phrase-ban rollback, and the wire fields of every dialect
mapped to one grammar.

The model tests use the embedded SmolLM2 GGUF (BPE). The tiny Mistral fixture ships no
GGUF (it is a transformers folder); its SentencePiece tokenizer family (with BOS) is
covered by exporting it to GGUF here (``export_gguf``, as ``limamono export gguf`` does):
its weights are random, so only what the grammar forces is asserted there.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from limamono.engine.protocol import GrammarError
from limamono.samplers import SamplerError, get_preset
from limamono.samplers.settings import MAX_GRAMMAR_DEPTH, Grammar, grammar_depth
from limamono.samplers.wire import grammar_from_fields, settings_from_fields
from limamono.server import ServerConfig, create_app

YES_NO = 'root ::= "yes" | "no"'
SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "mood": {"type": "string", "enum": ["calm", "tense"]},
                         "age": {"type": "integer"}},
          "required": ["name", "mood", "age"]}
PROMPT = "Is the sky blue? Answer:"


def greedy(gbnf: str, field: str = "grammar") -> Any:
    return get_preset("greedy").replace(grammar=Grammar(gbnf, field))


# -- the wire: one grammar from the fields of every dialect (no model) --------------------

@pytest.mark.parametrize("field", ["grammar", "grammar_string", "guided_grammar"])
def test_gbnf_fields_map_to_the_grammar(field):
    assert grammar_from_fields({field: YES_NO}) == Grammar(YES_NO, field)


def test_the_same_grammar_under_two_names_counts_once():
    """SillyTavern sends its grammar box as both grammar_string and grammar to KoboldCpp
    and llama.cpp (textgen-settings.js)."""
    assert grammar_from_fields({"grammar_string": YES_NO, "grammar": YES_NO}) == \
        Grammar(YES_NO, "grammar")


def test_two_different_constraints_are_refused_naming_both():
    with pytest.raises(SamplerError) as caught:
        grammar_from_fields({"grammar_string": YES_NO, "json_schema": SCHEMA})
    assert caught.value.field == "json_schema"
    assert "grammar_string and json_schema are both set" in str(caught.value)


@pytest.mark.parametrize("field", ["json_schema", "guided_json"])
def test_a_json_schema_becomes_llamacpps_grammar(field):
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    assert grammar_from_fields({field: SCHEMA}) == \
        Grammar(json_schema_to_gbnf(json.dumps(SCHEMA)), field)
    assert grammar_from_fields({field: json.dumps(SCHEMA)}).gbnf == \
        grammar_from_fields({field: SCHEMA}).gbnf  # TabbyAPI-style JSON text


def test_response_format_json_schema_and_json_object():
    inner = grammar_from_fields({"response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}})
    assert inner.gbnf == grammar_from_fields({"json_schema": SCHEMA}).gbnf
    assert inner.field == "response_format"
    assert grammar_from_fields({"response_format": {"type": "json_object"}}).gbnf == \
        grammar_from_fields({"json_schema": {"type": "object"}}).gbnf
    assert grammar_from_fields({"response_format": {"type": "text"}}) is None


def test_guided_choice_is_an_alternation_of_escaped_literals():
    assert grammar_from_fields({"guided_choice": ["yes", 'say "hi"\\', "a\nb"]}).gbnf == \
        'root ::= "yes" | "say \\"hi\\"\\\\" | "a\\u000ab"'


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"guided_regex": "[a-z]+"}, "guided_regex", "regular-expression constraints"),
    ({"json_schema": "{not json"}, "json_schema", "is not JSON"),
    ({"json_schema": [1]}, "json_schema", "must be a JSON schema"),
    ({"json_schema": {"$ref": "#/nowhere"}}, "json_schema", "cannot turn this schema"),
    ({"grammar": 5}, "grammar", "must be a GBNF grammar"),
    ({"guided_choice": []}, "guided_choice", None),  # empty: off, as "" and {}
])
def test_bad_constraint_values_name_their_field(fields, field, words):
    if words is None:
        assert grammar_from_fields(fields) is None
        return
    with pytest.raises(SamplerError) as caught:
        grammar_from_fields(fields)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_empty_fields_are_no_constraint():
    assert grammar_from_fields({"grammar": "", "grammar_string": "", "json_schema": {},
                                "guided_json": None}) is None


def test_a_grammar_turns_the_presets_soft_landing_off():
    base = get_preset("limamono")
    assert base.soft_landing
    settings = settings_from_fields({"grammar": YES_NO}, base, "koboldcpp")
    assert settings.grammar == Grammar(YES_NO, "grammar") and not settings.soft_landing


@pytest.mark.parametrize("flag", ["soft_landing", "ban_eos_token"])
def test_soft_landing_or_ban_eos_with_a_grammar_is_refused_naming_both(flag):
    with pytest.raises(SamplerError) as caught:
        settings_from_fields({"grammar_string": YES_NO, flag: True}, get_preset("limamono"),
                             "textgen")
    assert caught.value.field == flag
    assert "cannot be combined with a grammar (grammar_string)" in str(caught.value)


def test_grammar_depth_skips_literals_classes_and_comments():
    assert grammar_depth('root ::= ("(" [(] ( "a" ) ) # ((((\n') == 2
    assert grammar_depth('root ::= "\\"((("') == 0


def test_too_deep_or_too_long_grammars_are_refused_before_llamacpp_parses_them():
    """llama.cpp's parser recursed into a segmentation fault at 30 000 nested groups."""
    deep = "root ::= " + "(" * (MAX_GRAMMAR_DEPTH + 1) + '"a"' + ")" * (MAX_GRAMMAR_DEPTH + 1)
    with pytest.raises(SamplerError, match="nested 257 deep"):
        get_preset("greedy").replace(grammar=Grammar(deep, "grammar"))
    with pytest.raises(SamplerError, match="characters of grammar"):
        get_preset("greedy").replace(grammar=Grammar('root ::= "' + "a" * 70000 + '"'))


def test_engines_without_grammars_refuse_naming_the_field():
    from limamono.engine.loop import EngineBase

    with pytest.raises(GrammarError) as caught:
        EngineBase().check_grammar(Grammar(YES_NO, "json_schema"))
    assert caught.value.field == "json_schema"
    assert "need the llama.cpp backend" in str(caught.value)


# -- the llama.cpp engine (the embedded SmolLM2 GGUF) --------------------------------------

@pytest.fixture(scope="module")
def engine() -> Any:
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf

    made = LlamaCppEngine(embedded_gguf(), context_length=512, threads=1, parallel=2)
    yield made
    made.close()


@pytest.fixture(scope="module")
def client(engine: Any) -> Any:
    with TestClient(create_app(engine, ServerConfig())) as test_client:
        yield test_client


@pytest.mark.slow
def test_a_tiny_grammar_gives_exactly_its_words_and_then_eos(engine):
    reply = engine.generate(PROMPT, greedy(YES_NO), 10)
    assert (reply.text, reply.finish_reason, reply.completion_tokens) == ("yes", "stop", 2)


@pytest.mark.slow
def test_the_grammar_overrides_the_models_choice(engine):
    free = engine.generate(PROMPT, get_preset("greedy"), 3).text
    assert not free.startswith("maybe")
    reply = engine.generate(PROMPT, greedy('root ::= "maybe, " [0-9] "%"'), 10)
    assert reply.text.startswith("maybe, ") and reply.text.endswith("%")
    assert len(reply.text) == len("maybe, 5%") and reply.finish_reason == "stop"


@pytest.mark.slow
def test_a_banned_phrase_rolls_the_grammar_back(engine):
    """The banned "yes" is taken back; if the grammar kept it, only EOS would be allowed
    and the reply would be empty."""
    settings = greedy(YES_NO).replace(banned_strings=("yes",))
    reply = engine.generate(PROMPT, settings, 10)
    assert (reply.text, reply.finish_reason) == ("no", "stop")
    assert engine.stats.rolled_back_tokens >= 1


@pytest.mark.slow
def test_each_stream_has_its_own_grammar_state(engine):
    """Two slots decoding in one batch, each with its own grammar."""
    grammars = {"a": 'root ::= "yes" | "no"', "b": 'root ::= "no, " [a-z]+ "."'}
    results: dict[str, str] = {}

    def run(key: str) -> None:
        results[key] = engine.generate(PROMPT, greedy(grammars[key]), 12).text

    threads = [threading.Thread(target=run, args=(key,)) for key in grammars]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results["a"] == "yes"
    assert results["b"].startswith("no, ") and results["b"].endswith(".")
    assert results["b"][4:-1].isalpha() and results["b"][4:-1].islower()


@pytest.mark.slow
def test_bad_grammars_quote_llamacpps_parser(engine):
    cases = {'root ::= "yes" | foo': "Undefined rule identifier 'foo'",
             'root ::= "yes': "unexpected end of input",
             'start ::= "a"': "grammar does not contain a 'root' symbol",
             'root ::= root "a" | "a"': "left recursion detected"}
    for gbnf, words in cases.items():
        with pytest.raises(GrammarError) as caught:
            engine.check_grammar(Grammar(gbnf, "grammar_string"))
        assert caught.value.field == "grammar_string"
        assert str(caught.value).startswith("grammar_string: llama.cpp cannot parse this "
                                            "grammar: ")
        assert words in str(caught.value)


def _valid(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert set(SCHEMA["required"]) <= set(value)
    assert isinstance(value["name"], str) and isinstance(value["age"], int)
    assert value["mood"] in ("calm", "tense")
    return value


@pytest.mark.slow
def test_a_json_schema_request_returns_valid_json(client):
    """The required end-to-end test: /v1/completions with json_schema, two choices
    (each its own stream and grammar), the server's sampler preset."""
    body = {"prompt": "A character sheet as JSON:\n", "max_tokens": 80, "seed": 7,
            "json_schema": SCHEMA, "n": 2}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert len(choices) == 2
    for choice in choices:
        assert choice["finish_reason"] == "stop"
        _valid(choice["text"])


@pytest.mark.slow
def test_kobold_generate_with_a_gbnf_grammar_returns_valid_json(client):
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    body = {"prompt": "A character sheet as JSON:\n", "max_length": 80, "sampler_seed": 3,
            "grammar": json_schema_to_gbnf(json.dumps(SCHEMA))}
    response = client.post("/api/v1/generate", json=body)
    assert response.status_code == 200, response.text
    _valid(response.json()["results"][0]["text"])


@pytest.mark.slow
def test_llamacpp_completion_with_a_grammar_streams(client):
    response = client.post("/completion", json={"prompt": PROMPT, "n_predict": 8,
                                                "temperature": 0, "grammar": YES_NO,
                                                "stream": True})
    assert response.status_code == 200
    lines = [json.loads(line[6:]) for line in response.text.splitlines()
             if line.startswith("data: ")]
    assert "".join(part["content"] for part in lines) == "yes"


@pytest.mark.slow
def test_a_bad_grammar_is_a_400_and_the_server_goes_on(client):
    response = client.post("/v1/completions", json={
        "prompt": PROMPT, "max_tokens": 4, "grammar_string": 'root ::= "yes" | foo'})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "grammar_string"
    assert error["message"] == ("grammar_string: llama.cpp cannot parse this grammar: "
                                "Undefined rule identifier 'foo'")
    again = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4,
                                                 "temperature": 0, "grammar_string": YES_NO})
    assert again.status_code == 200 and again.json()["choices"][0]["text"] == "yes"


@pytest.mark.slow
def test_soft_landing_with_a_grammar_is_a_400_on_the_route(client):
    response = client.post("/v1/completions", json={
        "prompt": PROMPT, "max_tokens": 4, "json_schema": SCHEMA, "soft_landing": True})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "soft_landing"
    assert "(json_schema)" in response.json()["error"]["message"]


def test_koboldcpps_json_to_grammar_route():
    """KoboldCpp Lite posts {"schema": ...} and reads success and result; other clients
    post the schema itself. The converter is the one json_schema requests use."""
    from test_server_fakes import FakeEngine

    expected = grammar_from_fields({"json_schema": SCHEMA}).gbnf
    with TestClient(create_app(FakeEngine(), ServerConfig())) as test_client:
        for body in ({"schema": SCHEMA}, SCHEMA):
            response = test_client.post("/api/extra/json_to_grammar", json=body)
            assert response.status_code == 200
            assert response.json() == {"result": expected, "success": True}
        response = test_client.post("/api/extra/json_to_grammar",
                                    json={"schema": {"$ref": "#/nowhere"}})
        answer = response.json()
        assert (answer["result"], answer["success"]) == ("", False)
        assert answer["error"].startswith("schema='...': llama-cpp-python cannot turn this "
                                          "schema into a grammar")


@pytest.fixture(scope="module")
def mistral_engine(tiny_mistral_gguf: Any) -> Any:
    from limamono.engine.llamacpp import LlamaCppEngine

    made = LlamaCppEngine(tiny_mistral_gguf, context_length=512, threads=1, parallel=2)
    yield made
    made.close()


@pytest.mark.slow  # the export and a 200-token reply take about 10 s here
def test_grammars_on_the_mistral_sentencepiece_tokenizer(mistral_engine):
    assert mistral_engine.start_ids == (1,)  # BOS, as the Mistral tokenizer adds it
    for seed in range(3):
        settings = get_preset("limamono").replace(soft_landing=False, seed=seed,
                                                  grammar=Grammar(YES_NO))
        reply = mistral_engine.generate(PROMPT, settings, 10)
        assert reply.text in ("yes", "no") and reply.finish_reason == "stop"
    schema = get_preset("limamono").replace(
        soft_landing=False, seed=5, grammar=grammar_from_fields({"json_schema": SCHEMA}))
    reply = mistral_engine.generate("A character sheet as JSON:\n", schema, 200)
    assert reply.finish_reason == "stop", reply
    _valid(reply.text)
    settings = greedy(YES_NO).replace(banned_strings=("yes",))
    assert mistral_engine.generate(PROMPT, settings, 10).text == "no"
