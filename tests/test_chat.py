"""ChatSession: prompts, length labels, budget, swipes, continue, edit, undo, the guard.

Everything runs on ``ScriptedEngine`` (also used by the CLI tests): it replays scripted
replies in small chunks, counts one token per word and applies stop strings the way the
real engine does, so the exact prompts and texts are known.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator, Sequence

import pytest

from limamono.chat import (
    ChatConfig,
    ChatError,
    ChatSession,
    ImpersonationGuard,
    drop_chunk,
    thoughts,
)
from limamono.core import format as fmt
from limamono.core.conversation import Character, Conversation, Message, Swipe, User
from limamono.core.policy import ContextOverflowError, PromptTooLongError
from limamono.engine.protocol import Completion, TextChunk


class ScriptedEngine:
    """An Engine that replays scripted replies; records every prompt it was given.

    Args:
        replies: the texts to return, in order (the last one repeats when they run out).
        context_length: the context size it claims.
        apply_stops: cut at stop strings like the real engine (False: leave it to the guard).
        cancel_after: set the cancel event after this many chunks (a simulated Ctrl-C).
    """

    model_name = "scripted"

    def __init__(self, replies: Sequence[str], context_length: int = 4096,
                 apply_stops: bool = True, cancel_after: int | None = None) -> None:
        self.replies = list(replies)
        self.context_length = context_length
        self.apply_stops = apply_stops
        self.cancel_after = cancel_after
        self.prompts: list[str] = []
        self.settings: list[object] = []

    def tokenize(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join("x" * i for i in ids)

    def stream_text(self, prompt: str, settings: object, max_new_tokens: int,
                    stop: Sequence[str] = (), cancel: threading.Event | None = None,
                    truncation: str = "left") -> Iterator[TextChunk]:
        self.prompts.append(prompt)
        self.settings.append(settings)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        stop_string = None
        if self.apply_stops:
            hits = [(reply.find(s), s) for s in stop if s in reply]
            if hits:
                at, stop_string = min(hits)
                reply = reply[:at]
        pieces = re.findall(r"\s*\S+", reply) + ([reply[len(reply.rstrip()):]]
                                                 if reply != reply.rstrip() else [])
        count = 0
        for count, piece in enumerate(pieces[:max_new_tokens], start=1):
            if cancel is not None and cancel.is_set():
                yield TextChunk("", "cancelled", 0, count - 1)
                return
            yield TextChunk(piece, None, 0, count)
            if self.cancel_after is not None and count >= self.cancel_after and cancel:
                cancel.set()
        if cancel is not None and cancel.is_set():
            yield TextChunk("", "cancelled", 0, count)
            return
        reason = "stop" if stop_string or len(pieces) <= max_new_tokens else "length"
        yield TextChunk("", reason, len(self.tokenize(prompt)), count, stop_string)

    def generate(self, prompt: str, settings: object, max_new_tokens: int,
                 stop: Sequence[str] = (), cancel: threading.Event | None = None,
                 truncation: str = "left") -> Completion:
        chunks = list(self.stream_text(prompt, settings, max_new_tokens, stop, cancel))
        last = chunks[-1]
        return Completion("".join(c.text for c in chunks), last.finish_reason or "stop",
                          last.prompt_tokens, last.completion_tokens, last.stop_string)


CHAR = Character("Mira Holt", "Occupation: Lighthouse keeper\nMira keeps the lamp at Gull Point.")
SCENARIO = "A storm traps a visitor at the lighthouse."
GREETING = 'Mira looked up from the lamp. "You made it up the stairs, then."'


def session(replies: Sequence[str], **kwargs: object) -> tuple[ChatSession, ScriptedEngine]:
    config = kwargs.pop("config", None)
    engine = ScriptedEngine(replies, **kwargs)  # type: ignore[arg-type]
    chat = ChatSession(Conversation(CHAR, User("Tom"), SCENARIO, [Message("char", GREETING)]),
                       engine, settings="preset", config=config)  # type: ignore[arg-type]
    return chat, engine


def run(stream: Iterator[str]) -> str:
    return "".join(stream)


# --------------------------------------------------------------------------- prompts

def test_send_renders_the_exact_prompt_with_length_labels() -> None:
    chat, engine = session(["She nodded."])
    assert run(chat.send("Hi there.")) == "She nodded."
    assert engine.prompts[0] == (
        fmt.TRIGGERS["card"] + "\n\n### Instruction:\nMira Holt\n"
        "Occupation: Lighthouse keeper\nMira keeps the lamp at Gull Point.\n"
        f"Scenario: {SCENARIO}\n\n"
        f"### Response: (length = tiny)\nMira Holt: {GREETING}\n\n"
        "### Input: (length = micro)\nTom: Hi there.\n\n"
        "### Response: (length = long)\nMira Holt:")
    assert engine.settings == ["preset"]
    assert [m.role for m in chat.history] == ["char", "user", "char"]
    assert chat.history[-1].text == "She nodded."


def test_past_turns_are_labelled_by_word_count_and_the_latest_input_by_setting() -> None:
    long_input = " ".join(["word"] * 45)
    messages = [Message("char", GREETING), Message("user", long_input),
                Message("char", "Yes."), Message("user", "Go on.")]
    chat, _ = session([], config=ChatConfig(input_length="short"))
    labelled = chat.conversation(messages).messages
    assert [m.length for m in labelled] == ["tiny", "short", "micro", "short"]
    fixed = [Message("user", "Hm.", "huge")]
    assert chat.conversation(fixed).messages[0].length == "huge"
    chat.input_length = None  # the training policy's own rule: the word count
    assert [m.length for m in chat.conversation(messages).messages] == [
        "tiny", "short", "micro", "micro"]


def test_response_and_input_length_settings_reach_the_prompt() -> None:
    chat, engine = session(["Fine."])
    chat.response_length = "massive"
    chat.input_length = "micro"
    run(chat.send("Hello."))
    assert engine.prompts[0].endswith(
        "### Input: (length = micro)\nTom: Hello.\n\n### Response: (length = massive)\nMira Holt:")
    with pytest.raises(ChatError, match="response_length 'enormous' is not one of"):
        chat.response_length = "enormous"


def test_thoughts_are_extracted() -> None:
    text = 'She smiled. _He has no idea._ "Welcome." _Not yet, anyway._ snake_case stays.'
    assert thoughts(text) == ["He has no idea.", "Not yet, anyway."]


# --------------------------------------------------------------------------- context budget

def test_history_is_dropped_in_chunks_and_the_prefix_stays_stable() -> None:
    # One token per word; the sheet and headers take ~60 tokens, every turn ~12.
    chat, engine = session(["one two three four five six seven eight nine ten"],
                           context_length=190, config=ChatConfig(max_new_tokens=20))
    drops = []
    for i in range(12):
        run(chat.send(f"message number {i} with some extra words"))
        drops.append(chat.dropped)
        assert chat.last_result is not None and chat.last_result.dropped == chat.dropped
    assert drops[0] == 0
    assert drops == sorted(drops), "the number left out only grows while the chat grows"
    jumps = [b - a for a, b in itertools.pairwise(drops) if b != a]
    assert jumps and all(j >= 2 for j in jumps), f"dropped in chunks, not one by one: {drops}"
    assert all(len(p.split()) <= 170 for p in engine.prompts)
    assert all("### Instruction:\nMira Holt\n" in p for p in engine.prompts)
    # Between two turns without a new drop the old prompt is a prefix of the new one, up to
    # the previous input's header (its label changes from the input setting to word count).
    same = [i for i in range(1, 12) if drops[i] == drops[i - 1]]
    assert same
    i = same[-1]
    cut = engine.prompts[i - 1].rfind("### Input:")
    assert engine.prompts[i].startswith(engine.prompts[i - 1][:cut])


def test_a_long_latest_message_is_kept_and_older_turns_go() -> None:
    # One token per word. The greeting and a first exchange go; the long message stays.
    # The sheet, the long message and the open header take 149 tokens, all of it 185.
    chat, engine = session(["Fine.", "Aye."], context_length=149 + 20,
                           config=ChatConfig(max_new_tokens=20))
    run(chat.send("Short hello."))
    long_message = " ".join(["storm"] * 90)
    run(chat.send(long_message))
    prompt = engine.prompts[-1]
    assert f"Tom: {long_message}\n\n### Response: (length = long)\nMira Holt:" in prompt
    assert GREETING not in prompt and "Short hello." not in prompt
    assert chat.last_result is not None and chat.last_result.dropped == 3
    assert (chat.last_result.tokens_before, len(prompt.split())) == (185, 149)
    with pytest.raises(PromptTooLongError):
        run(chat.send(long_message + " more"))  # one token too many: refused, not cut


def test_drop_chunk_is_a_quarter_at_least_one() -> None:
    assert [drop_chunk(n, 0.25) for n in (0, 1, 4, 5, 40)] == [1, 1, 1, 2, 10]


def test_prompt_that_cannot_fit_names_the_numbers() -> None:
    chat, _ = session(["x"], context_length=40, config=ChatConfig(max_new_tokens=10))
    with pytest.raises(ContextOverflowError,
                       match=r"needs \d+ tokens even with every older turn left out .* "
                             r"but only 30 fit"):
        run(chat.send("hello"))


# --------------------------------------------------------------------------- swipes, edits

def test_regenerate_keeps_every_alternative_and_swipes_choose() -> None:
    chat, engine = session(["First.", "Second.", "Third."])
    run(chat.send("Hi."))
    assert run(chat.regenerate()) == "Second."
    assert run(chat.regenerate()) == "Third."
    last = chat.history[-1]
    assert [s.text for s in last.swipes] == ["First.", "Second.", "Third."]
    assert last.swipe_id == 2
    assert engine.prompts[0] == engine.prompts[1] == engine.prompts[2]
    chat.choose_swipe(0)
    assert chat.history[-1].text == "First."
    with pytest.raises(ChatError, match="swipe 4 does not exist"):
        chat.choose_swipe(3)


def test_continue_appends_to_the_current_swipe_with_the_same_prompt_prefix() -> None:
    chat, engine = session(["She paused.", " Then she laughed."])
    run(chat.send("Hi."))
    assert run(chat.continue_reply()) == " Then she laughed."
    assert chat.history[-1].text == "She paused. Then she laughed."
    assert engine.prompts[1] == engine.prompts[0] + " She paused."


def test_edit_delete_and_undo() -> None:
    chat, _ = session(["Reply one."])
    run(chat.send("Hi."))
    chat.edit("Edited reply.")
    assert chat.history[-1].text == "Edited reply."
    chat.delete()
    assert [m.role for m in chat.history] == ["char", "user"]
    assert chat.undo()
    assert chat.history[-1].text == "Edited reply."
    assert chat.undo()
    assert chat.history[-1].text == "Reply one."
    assert chat.undo()
    assert len(chat.history) == 1
    assert not chat.undo()
    with pytest.raises(ChatError, match="no reply to continue"):
        chat.history.append(Message("user", "x"))
        chat.continue_reply()


def test_on_change_sees_every_change() -> None:
    seen: list[int] = []
    chat, _ = session(["A."])
    chat.on_change = lambda s: seen.append(len(s.history))
    run(chat.send("Hi."))
    chat.undo()
    assert seen == [2, 3, 1]


def test_hidden_messages_stay_out_of_the_prompt() -> None:
    chat, engine = session(["Ok."])
    chat.history.append(Message("user", "secret note", hidden=True))
    run(chat.send("Hi."))
    assert "secret note" not in engine.prompts[0]


def test_message_needs_a_valid_swipe() -> None:
    with pytest.raises(ValueError, match="at least one swipe"):
        Message("char", swipes=[])
    with pytest.raises(ValueError, match=r"swipe_id 2 is out of range 0\.\.0"):
        Message("char", swipes=[Swipe("a")], swipe_id=2)


# --------------------------------------------------------------------------- the guard

@pytest.mark.parametrize(("reply", "kept", "cut"), [
    ("She waved.\nTom: Hello!", "She waved.", "user"),
    ("She waved.\n  Tom: Hello!", "She waved.", "user"),
    ("Tom: I take the lamp.", "", "user"),
    ("She waved.\n\n### Input:\nTom: hi", "She waved.", "header"),
    ("She waved. ###", "She waved.", "header"),
    ("She waved.\nTomas arrived.", "She waved.\nTomas arrived.", None),
    ("A # sign and ## two.", "A # sign and ## two.", None),
])
def test_guard_cuts_where_the_user_or_a_header_starts(reply: str, kept: str,
                                                      cut: str | None) -> None:
    for apply_stops in (False, True):
        chat, _ = session([reply], apply_stops=apply_stops)
        shown = run(chat.send("Hi."))
        assert shown == kept
        assert chat.history[-1].text == kept
        assert chat.history[-1].current.cut == cut
        assert chat.last_result is not None and chat.last_result.cut == cut


def test_guard_never_shows_text_it_takes_back() -> None:
    guard = ImpersonationGuard("Tom")
    shown = [guard.feed(p) for p in [" She", " waved.", "\n", "To", "m", ": hi"]]
    assert shown == ["She", " waved.", "", "", "", ""]
    assert guard.cut == "user" and guard.text == "She waved."


def test_cancel_keeps_the_partial_reply() -> None:
    chat, _ = session(["one two three four five six"], cancel_after=2)
    cancel = threading.Event()
    assert run(chat.send("Hi.", cancel=cancel)) == "one two"
    assert chat.history[-1].text == "one two"
    assert chat.history[-1].current.finish_reason == "cancelled"


def test_length_limit_is_reported() -> None:
    chat, _ = session(["a b c d e"], config=ChatConfig(max_new_tokens=3))
    assert run(chat.send("Hi.")) == "a b c"
    assert chat.last_result is not None and chat.last_result.finish_reason == "length"


def test_greeting_can_be_generated() -> None:
    engine = ScriptedEngine(["The door creaked open."])
    chat = ChatSession(Conversation(CHAR, User("Tom"), SCENARIO), engine)
    assert run(chat.reply()) == "The door creaked open."
    assert engine.prompts[0].endswith(f"Scenario: {SCENARIO}\n\n"
                                      "### Response: (length = long)\nMira Holt:")


# --------------------------------------------------------------------------- real engine

@pytest.mark.slow
def test_budget_and_prefix_reuse_on_a_real_engine(tiny_model_dir: object) -> None:
    """Real tokenizer, real KV cache (tiny random model): prompts fit, prefixes get reused."""
    from limamono.engine import load_engine
    from limamono.samplers import get_preset

    engine = load_engine(str(tiny_model_dir), dtype="fp32", context_length=400)
    chat = ChatSession(Conversation(CHAR, User("Tom"), SCENARIO, [Message("char", GREETING)]),
                       engine, get_preset("greedy"), ChatConfig(max_new_tokens=6))
    drops, reused, prompts = [], [], []
    for i in range(14):
        run(chat.send(f"Turn {i}: the wind is rising and the lamp flickers again."))
        result = chat.last_result
        assert result is not None and result.prompt_tokens <= 400 - 6
        drops.append(chat.dropped)
        reused.append(engine.stats.last_reused)
        prompts.append(result.prompt_tokens)
    assert drops[0] == 0 and drops[-1] > 0 and drops == sorted(drops)
    steady = [i for i in range(1, 14) if drops[i] == drops[i - 1]]
    assert steady
    # Without a new drop, everything up to the previous input's header comes from the cache.
    assert all(reused[i] > prompts[i] * 0.6 for i in steady), (reused, prompts, drops)
