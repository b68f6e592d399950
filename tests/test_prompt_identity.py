"""One prompt everywhere: chat, the server's chat route, eval and `limamono render --open` give
the same prompt for the same conversation and policy (issue 10, test c).

Every example conversation and hypothesis-generated ones, under both named policies. The
context is large enough that nothing is cut (a chat drops old turns in steps of a quarter,
for its KV cache, so cut prompts differ by design; fitting itself is tested in
test_policy.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from limamono.chat import ChatConfig, ChatSession
from limamono.cli import app
from limamono.core import conversation as conv_mod
from limamono.core import format as fmt
from limamono.core.conversation import LENGTHS, Character, Conversation, Message, User
from limamono.core.policy import POLICIES, get_policy
from limamono.evaluate.run import EvalConfig, Prompt, generate_samples
from limamono.models import adapter_card
from limamono.server import ServerConfig, create_app
from test_server_fakes import FakeEngine

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "conversations")
                  .glob("*.yaml"))
CONTEXT = 1 << 20  # characters are tokens in the fake engine: nothing is ever cut


def chat_prompt(conv: Conversation, policy: str) -> str:
    engine = FakeEngine(context_length=CONTEXT)
    session = ChatSession(Conversation(conv.character, conv.user, conv.scenario,
                                       list(conv.messages)), engine,
                          config=ChatConfig(policy=get_policy(policy)))
    return session.build_prompt().text


def server_prompt(conv: Conversation, policy: str) -> str:
    engine = FakeEngine(reply=" Aye.", context_length=CONTEXT)
    with TestClient(create_app(engine, ServerConfig())) as client:
        response = client.post("/v1/chat/completions", json={
            "messages": fmt.to_chat_messages(conv), "policy": policy, "max_tokens": 8,
            # A new reply, as the others build, also after a trailing character turn
            # (which the chat route otherwise continues: SillyTavern's Continue).
            "add_generation_prompt": True})
    assert response.status_code == 200, response.text
    return engine.calls[0].prompt


def eval_prompt(conv: Conversation, policy: str) -> str:
    engine = FakeEngine(reply=" Aye.", context_length=CONTEXT)
    config = EvalConfig(data=Path("."), policy=policy)
    generate_samples(engine, [Prompt(conv, len(conv.messages), "long", 1)], config,
                     defaults=adapter_card.defaults(None, policy=policy))
    return engine.calls[0].prompt


def render_prompt(path: Path, policy: str) -> str:
    result = CliRunner().invoke(app, ["render", str(path), "--open", "--policy", policy])
    assert result.exit_code == 0, result.output
    # The prompt ends with "Name:"; a newline after it is the terminal's, not the prompt's.
    return result.stdout.removesuffix("\n")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_gives_one_prompt_everywhere(path: Path, policy: str) -> None:
    [conv] = conv_mod.load(path)
    expected = get_policy(policy).render(conv)
    assert expected.endswith(f"\n\n### Response: (length = long)\n{conv.character.name}:")
    assert render_prompt(path, policy) == expected
    assert chat_prompt(conv, policy) == expected
    assert server_prompt(conv, policy) == expected
    assert eval_prompt(conv, policy) == expected


_WORD = st.text(alphabet="abcdefghij", min_size=1, max_size=6)
_TEXT = st.lists(_WORD, min_size=1, max_size=70).map(" ".join)
_MESSAGES = st.lists(st.tuples(st.sampled_from(["char", "user"]), _TEXT,
                               st.sampled_from([None, None, *LENGTHS])),
                     min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=_MESSAGES, policy=st.sampled_from(POLICIES))
def test_generated_conversations_give_one_prompt_everywhere(messages, policy) -> None:
    conv = Conversation(Character("Ada Brook", "Occupation: ferry pilot"), User("Cyd"),
                        "Fog on the river.", [Message(r, t, n) for r, t, n in messages])
    expected = get_policy(policy).render(conv)
    assert chat_prompt(conv, policy) == expected
    assert server_prompt(conv, policy) == expected
    assert eval_prompt(conv, policy) == expected
