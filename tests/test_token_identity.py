"""Token identity (issue 10) on the embedded SmolLM2 tokenizer and on Mistral-7B v0.1's.

(a) A training sample's ids are the tokenisation of its whole text (BOS as the tokenizer
    adds it); (b) for every trained character turn, the ids before it are exactly what the
    engine feeds for the open prompt of that turn (the training policy's render, BOS
    included). Over every example conversation and hypothesis-generated ones.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limamono import dataset as ds
from limamono.core.conversation import Character, Conversation, Message, User
from limamono.core.policy import get_policy

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "conversations"
#: Large enough that no conversation is windowed: one sample per conversation.
WHOLE = ds.BuildConfig(seq_len=1 << 16, val=0)


@pytest.fixture(scope="module", params=["smollm2", "mistral"])
def pair(request):
    """(tokenizer, torch engine) on a tiny random model with that tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from limamono.engine.torch_engine import Engine

    folder = request.getfixturevalue(
        {"smollm2": "tiny_model_dir", "mistral": "tiny_mistral_dir"}[request.param])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    engine = Engine(AutoModelForCausalLM.from_pretrained(folder), tokenizer,
                    context_length=1 << 20, cache_entries=0)
    return tokenizer, engine


def trained_starts(labels: list[int]) -> list[int]:
    """Index of the first token of every run of trained tokens."""
    return [i for i, label in enumerate(labels) if label != ds.IGNORE_INDEX
            and (i == 0 or labels[i - 1] == ds.IGNORE_INDEX)]


def check_identity(result: ds.BuildResult, tokenizer, engine) -> int:
    """Assert (a) and (b) for every sample of a build; return the turns checked."""
    policy = get_policy("training", result.config.trigger, result.config.length_bounds)
    conversations = {r.name: r.conversation for r in result.records}
    checked = 0
    for sample in result.samples:
        text = ds.join(sample.pieces)
        assert sample.input_ids == tokenizer(text)["input_ids"], sample.source  # (a)
        conv = conversations[sample.source]
        chars = [i for i, m in enumerate(conv.messages) if m.role == "char"]
        starts = trained_starts(sample.labels)
        assert len(starts) == len(chars), sample.source
        for i, start in zip(chars, starts, strict=True):
            prompt = policy.render(replace(conv, messages=conv.messages[:i]),
                                   open_response=True,
                                   response_length=conv.messages[i].length)
            assert text.startswith(prompt), (sample.source, i)
            fed = engine.fit_prompt(prompt, max_new_tokens=1)
            assert sample.input_ids[:start] == fed, (sample.source, i)  # (b)
            checked += 1
    return checked


def test_example_conversations_keep_token_identity(pair):
    tokenizer, engine = pair
    records, problems = ds.load_dir(EXAMPLES)
    assert not problems
    result = ds.build_samples(records, tokenizer, WHOLE)
    assert len(result.samples) == len(records) == 30
    assert all(s.window == 0 for s in result.samples)
    assert check_identity(result, tokenizer, engine) == sum(
        m.role == "char" for r in records for m in r.conversation.messages)


def test_windowed_samples_are_still_whole_text_tokenisations(pair):
    tokenizer, _ = pair
    records = ds.load_dir(EXAMPLES)[0][::5]  # six of them: windowing re-tokenises a lot
    for overflow in ("window", "truncate"):
        result = ds.build_samples(records, tokenizer,
                                  ds.BuildConfig(seq_len=1500, val=0, overflow=overflow))
        assert any(s.window > 0 for s in result.samples) or overflow == "truncate"
        for sample in result.samples:
            assert len(sample.input_ids) <= 1500
            assert sample.input_ids == tokenizer(ds.join(sample.pieces))["input_ids"]


def test_start_ids_are_what_the_convention_puts_first_never_a_trailing_eos():
    from limamono.models import tokens

    class BosAndEos:  # a post-processor that wraps text in <s> ... </s>
        def __call__(self, text, add_special_tokens=True):
            ids = [ord(c) for c in text]
            return {"input_ids": [1, *ids, 2] if add_special_tokens else ids}

    assert tokens.start_ids(BosAndEos()) == [1]
    assert tokens.encode(BosAndEos(), "ab") == [1, 97, 98]


def test_the_engine_feeds_bos_where_the_tokenizer_adds_it(pair):
    tokenizer, engine = pair
    bos = tokenizer("x")["input_ids"][:-1]  # Mistral [1]; SmolLM2 []
    assert list(engine.start_ids) == bos
    assert engine.prompt_ids("Mira: hi") == tokenizer("Mira: hi")["input_ids"]
    assert engine.tokenize("Mira: hi") == tokenizer("Mira: hi", add_special_tokens=False)[
        "input_ids"]  # counts and round trips stay BOS-free


def test_a_left_cut_keeps_bos(tiny_mistral_dir):
    from limamono.engine import load_engine

    engine = load_engine(str(tiny_mistral_dir), dtype="fp32", context_length=40,
                         backend="torch")
    text = "word " * 200  # not a Limamono prompt: cut raw, keeping the last tokens
    ids = engine.fit_prompt(text, max_new_tokens=8)
    assert ids[0] == 1 and len(ids) == 32
    assert ids[1:] == engine.tokenize(text)[-31:]
    assert engine.tokenizer.convert_ids_to_tokens(engine.fit_prompt("Mira:", 8)) == [
        "<s>", "▁M", "ira", ":"]
    assert engine.generate("Mira:", _greedy(), 2).prompt_tokens == 4


def test_every_server_route_feeds_bos_on_mistral(tiny_mistral_dir, monkeypatch):
    from fastapi.testclient import TestClient

    from limamono.engine import load_engine
    from limamono.server import ServerConfig, create_app

    engine = load_engine(str(tiny_mistral_dir), dtype="fp32", backend="torch")
    fed: list[list[int]] = []
    stream = engine.stream_tokens

    def recording(ids, *args, **kwargs):
        fed.append(list(ids))
        return stream(ids, *args, **kwargs)

    monkeypatch.setattr(engine, "stream_tokens", recording)
    prompt = "### Response: (length = tiny)\nMira:"
    with TestClient(create_app(engine, ServerConfig())) as client:
        for route, body in (
                ("/api/v1/generate", {"prompt": prompt, "max_length": 2}),
                ("/v1/completions", {"prompt": prompt, "max_tokens": 2}),
                ("/v1/chat/completions", {"max_tokens": 2, "messages": [
                    {"role": "system", "content": "Mira\nA keeper."},
                    {"role": "user", "content": "Hello."}]})):
            assert client.post(route, json=body).status_code == 200, route
    assert [ids[0] for ids in fed] == [1, 1, 1]
    assert fed[0] == fed[1] == engine.tokenizer(prompt)["input_ids"]


def _greedy():
    from limamono.samplers import get_preset

    return get_preset("greedy")


# --------------------------------------------------------------------------- generated

_WORDS = st.text(alphabet=st.sampled_from(list(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 .,!?'\"*_-:;()…—éß中😀\n")),
    min_size=1, max_size=60).filter(lambda t: t.strip())
_NAMES = st.text(alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyzAEIOUéß ")),
                 min_size=1, max_size=12).filter(lambda t: t.strip() == t and t)


@st.composite
def conversations(draw) -> Conversation:
    """A conversation the builder accepts: alternating roles, any start, texts with
    spaces, punctuation, newlines, non-ASCII and length labels or none."""
    n = draw(st.integers(1, 6))
    first = draw(st.sampled_from(["char", "user"]))
    roles = [("char", "user")[(i + (first == "user")) % 2] for i in range(n)]
    if "char" not in roles:
        roles.append("char")
    labels = st.sampled_from([None, "micro", "tiny", "short", "medium", "long"])
    messages = [Message(role, draw(_WORDS), draw(labels)) for role in roles]
    char, user = draw(_NAMES), draw(_NAMES)
    return Conversation(Character(char, draw(_WORDS)), User(user if user != char else "U"),
                        draw(st.one_of(st.just(""), _WORDS)), messages)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(conv=conversations())
def test_generated_conversations_keep_token_identity(pair, conv):
    tokenizer, engine = pair
    record = ds.Record(conv, "generated.yaml")
    try:
        result = ds.build_samples([record], tokenizer, WHOLE)
    except ds.DatasetError:
        return  # refused input (e.g. a header line): nothing is trained from it
    check_identity(result, tokenizer, engine)
