"""The generation engine: text-stream state machines, streaming, stops, cancel, KV reuse."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from limamono.core.policy import ContextOverflowError
from limamono.engine.textstream import IncrementalDecoder, StopMatcher
from limamono.samplers import get_preset

# -- StopMatcher (pure) -------------------------------------------------------------------


def test_stop_string_split_across_three_chunks_is_held_back_and_never_emitted():
    matcher = StopMatcher(["###"])
    assert matcher.feed("Hello #").text == "Hello "
    assert matcher.feed("#").text == ""
    result = matcher.feed("# Input")
    assert (result.text, result.stop) == ("", "###")
    assert matcher.flush() == ""
    assert matcher.feed("more").text == ""


def test_held_text_that_is_not_a_stop_is_released():
    matcher = StopMatcher(["\nBob:"])
    assert matcher.feed("Hi\nBo").text == "Hi"
    assert matcher.feed("b is here").text == "\nBob is here"
    assert matcher.feed("\nB").text == ""
    assert matcher.flush() == "\nB"
    assert matcher.stopped is None


def test_earliest_stop_wins_and_text_before_it_is_kept():
    matcher = StopMatcher(["\nBob:", "###", ""])
    result = matcher.feed("line\n### x\nBob: hi")
    assert (result.text, result.stop) == ("line\n", "###")
    assert matcher.stops == ("\nBob:", "###")


def test_overlapping_partial_prefixes_hold_the_longest_tail():
    matcher = StopMatcher(["abc", "bcd"])
    assert matcher.feed("xab").text == "x"
    result = matcher.feed("cd")
    assert (result.text, result.stop) == ("", "abc")


# -- IncrementalDecoder (pure and on the real tokenizer) -------------------------------


def _byte_decode(table: dict[int, bytes]):
    return lambda ids: b"".join(table[i] for i in ids).decode("utf-8", errors="replace")


def test_four_byte_emoji_split_over_byte_tokens_comes_out_whole():
    emoji = "😀".encode()
    table = {0: b"A ", 1: emoji[:1], 2: emoji[1:2], 3: emoji[2:3], 4: emoji[3:], 5: b"!"}
    decoder = IncrementalDecoder(_byte_decode(table))
    assert [decoder.add(i) for i in range(6)] == ["A ", "", "", "", "😀", "!"]
    assert decoder.flush() == ""


def test_flush_drops_an_unfinished_character():
    emoji = "😀".encode()
    decoder = IncrementalDecoder(_byte_decode({0: b"ok", 1: emoji[:2]}))
    assert [decoder.add(0), decoder.add(1)] == ["ok", ""]
    assert decoder.flush() == ""


@pytest.mark.parametrize("text", ["Café au lait, naïve façade.", "She smiled 🙂 and waved 👋🏽!",
                                  "_Why?_ *thud* ''Title'' 日本語"])
def test_real_tokenizer_pieces_never_split_a_character(tokenizer, text):
    decoder = IncrementalDecoder(lambda ids: tokenizer.decode(ids))
    pieces = [decoder.add(i) for i in tokenizer.encode(text, add_special_tokens=False)]
    pieces.append(decoder.flush())
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


# -- the engine on a tiny random model ------------------------------------------------


@pytest.fixture(scope="module")
def sharp_engine(tiny_model_dir):
    """fp32 tiny model with its (tied) embeddings scaled up.

    A random hidden-32 model has nearly flat logits, so 1e-7 differences between a whole
    and a chunked prefill flip tail-free cut-offs; scaling makes the distribution peaked
    enough that equal seeds give equal tokens, as with a real model.
    """
    import torch

    from limamono.engine import load_engine

    # One thread: on a busy shared machine, torch's thread pool mostly waits.
    engine = load_engine(str(tiny_model_dir), dtype="fp32", threads=1)
    with torch.no_grad():
        engine.model.model.embed_tokens.weight.mul_(8)
    return engine


def _seeded(seed: int = 3):
    # The card's samplers without the soft landing (tests/test_soft_landing.py has it):
    # these tests count on replies running to their cap.
    return replace(get_preset("limamono"), seed=seed, soft_landing=False)


PROMPT = "Mira looked out over the harbour. The boats were"


def test_context_overflow_error_mode_and_no_room(tiny_model_dir, sharp_engine):
    from limamono.engine.torch_engine import Engine

    small = Engine(sharp_engine.model, sharp_engine.tokenizer, context_length=16)
    with pytest.raises(ContextOverflowError, match="context length 16"):
        small.generate(PROMPT * 3, _seeded(), 4, truncation="error")
    with pytest.raises(ContextOverflowError, match="max_new_tokens=16"):
        small.generate("Hi", _seeded(), 16)


def test_left_truncation_of_plain_text_keeps_the_end(sharp_engine):
    from limamono.engine.torch_engine import Engine

    small = Engine(sharp_engine.model, sharp_engine.tokenizer, context_length=16)
    ids = small.tokenize(PROMPT * 3)
    assert small.fit_prompt(PROMPT * 3, 6) == ids[-10:]
    result = small.generate(PROMPT * 3, _seeded(), 6)
    assert (result.prompt_tokens, result.completion_tokens) == (10, 6)


def test_left_truncation_of_a_limamono_prompt_keeps_instruction_and_drops_old_turns(
        sharp_engine):
    from limamono.core import format as fmt
    from limamono.core.conversation import Character, Conversation, Message, User
    from limamono.engine.torch_engine import Engine

    turns = [Message("char" if i % 2 == 0 else "user", f"Turn number {i} says hello.")
             for i in range(12)]
    conv = Conversation(character=Character("Mira", "Mira\nA harbour pilot."),
                        user=User("Sam"), scenario="The docks at dawn.", messages=turns)
    prompt = fmt.render(conv, open_response=True)
    head = prompt[:prompt.index("\n\n### Response")]
    budget = len(sharp_engine.tokenize(prompt)) - 40
    small = Engine(sharp_engine.model, sharp_engine.tokenizer, context_length=budget + 8)
    kept = small.detokenize(small.fit_prompt(prompt, 8))
    assert len(small.tokenize(kept)) <= budget
    assert kept.startswith(head + "\n\n### ")
    assert kept.endswith("### Response: (length = long)\nMira:")
    assert "Turn number 0 " not in kept and "Turn number 11 " in kept
    assert prompt.endswith(kept[len(head):])  # whole turns dropped from the oldest


def _engine_pair(sharp_engine, entries: int = 4):
    from limamono.engine.torch_engine import Engine

    return (Engine(sharp_engine.model, sharp_engine.tokenizer, cache_entries=entries),
            Engine(sharp_engine.model, sharp_engine.tokenizer, cache_entries=0))


def test_cache_reuse_gives_identical_output_and_evaluates_fewer_tokens(sharp_engine):
    reuse, fresh = _engine_pair(sharp_engine)
    prompt, previous = PROMPT, 0
    for turn in range(3):
        a = reuse.generate(prompt, _seeded(turn), 16)
        b = fresh.generate(prompt, _seeded(turn), 16)
        assert a == b
        if turn:
            # The previous prompt is reused whole; re-tokenised reply text may differ.
            assert reuse.stats.last_reused >= previous - 1
            assert reuse.stats.last_reused + reuse.stats.last_evaluated == a.prompt_tokens
            assert fresh.stats.last_evaluated == a.prompt_tokens
        prompt, previous = f"{prompt}{a.text}\nSam: and then?\nMira:", a.prompt_tokens
    assert reuse.stats.evaluated_tokens < fresh.stats.evaluated_tokens / 2


def test_regenerating_the_same_prompt_reuses_all_but_one_token(sharp_engine):
    reuse, _ = _engine_pair(sharp_engine)
    first = reuse.generate(PROMPT, _seeded(1), 8)
    again = reuse.generate(PROMPT, _seeded(1), 8)
    assert first == again
    assert (reuse.stats.last_reused, reuse.stats.last_evaluated) == (first.prompt_tokens - 1, 1)


def test_lru_keeps_several_conversations_and_evicts_the_oldest(sharp_engine):
    reuse, _ = _engine_pair(sharp_engine, entries=2)
    prompts = ["Alpha went to the market", "Bravo sailed the cold sea",
               "Charlie painted a red door"]
    for p in prompts[:2]:
        reuse.generate(p, _seeded(), 4)
    reuse.generate(prompts[0] + " and", _seeded(), 4)  # A is still cached
    assert reuse.stats.last_reused == len(reuse.tokenize(prompts[0]))
    reuse.generate(prompts[2], _seeded(), 4)  # evicts B (least recently used)
    assert len(reuse.prompt_cache) == 2
    reuse.generate(prompts[1], _seeded(), 4)
    assert reuse.stats.last_reused == 0


def test_a_conversation_sharing_a_prefix_forks_instead_of_stealing(sharp_engine):
    reuse, _ = _engine_pair(sharp_engine)
    long_a = PROMPT + " drifting slowly past the old grey lighthouse at the point"
    reuse.generate(long_a, _seeded(), 4)
    reuse.generate(PROMPT + " red", _seeded(), 4)  # shares less than half of A's cache
    assert reuse.stats.last_reused == len(reuse.tokenize(PROMPT))
    reuse.generate(long_a, _seeded(), 4)
    assert reuse.stats.last_reused == len(reuse.tokenize(long_a)) - 1


def test_concurrent_generations_queue_and_match_sequential_results(sharp_engine):
    reuse, _ = _engine_pair(sharp_engine)
    prompts = [f"{PROMPT} {word}" for word in ("north", "south", "east")]
    expected = [reuse.generate(p, _seeded(i), 12).text for i, p in enumerate(prompts)]
    reuse.clear_cache()
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = reuse.generate(prompts[i], _seeded(i), 12).text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(3)] == expected


def test_a_second_stream_in_the_same_thread_fails_instead_of_deadlocking(sharp_engine):
    ids = sharp_engine.tokenize(PROMPT)
    first = sharp_engine.stream_tokens(ids, _seeded(), 5)
    next(first)
    with pytest.raises(RuntimeError, match="still holds an unfinished stream"):
        list(sharp_engine.stream_tokens(ids, _seeded(), 2))
    first.close()
    assert len(list(sharp_engine.stream_tokens(ids, _seeded(), 2))) == 2


def test_bad_arguments_are_rejected(sharp_engine):
    with pytest.raises(ValueError, match="empty"):
        list(sharp_engine.stream_tokens([], _seeded(), 3))
    with pytest.raises(ValueError, match="max_new_tokens=-1"):
        list(sharp_engine.stream_tokens([5], _seeded(), -1))
    assert sharp_engine.context_length == 2048
    assert sharp_engine.detokenize(sharp_engine.tokenize("Mira: hi")) == "Mira: hi"


# -- CLI --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["models", "generate", "complete"])
def test_cli_help(command):
    from typer.testing import CliRunner

    from limamono.cli import app

    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_cli_generate_streams_the_same_text_as_the_engine(tiny_model_dir):
    from typer.testing import CliRunner

    from limamono.cli import app
    from limamono.engine import load_engine

    expected = load_engine(str(tiny_model_dir), dtype="fp32").generate(
        PROMPT, _seeded(7), 6).text
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_model_dir), "--prompt",
                                      PROMPT, "--max-tokens", "6", "--seed", "7",
                                      "--dtype", "fp32", "--no-soft-landing"])
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"


def test_cli_generate_bad_model_fails_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from limamono.cli import app

    result = CliRunner().invoke(app, ["generate", "--model", str(tmp_path / "nope"),
                                      "--prompt", "hi"])
    assert result.exit_code == 2
    assert str(tmp_path / "nope") in result.output


def test_first_ctrl_c_sets_the_cancel_event_and_the_second_aborts():
    import os
    import signal

    from limamono.cli.engine_cmd import ctrl_c_sets

    before = signal.getsignal(signal.SIGINT)
    event = threading.Event()
    with ctrl_c_sets(event):
        os.kill(os.getpid(), signal.SIGINT)
        assert event.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


class _ScriptedEngine:
    """Yields one chunk, presses Ctrl-C, then reports what the cancel event says."""

    def stream_text(self, prompt, settings, max_new_tokens, stop=(), cancel=None):
        import os
        import signal

        from limamono.engine.protocol import TextChunk

        yield TextChunk(f"<{prompt}>", prompt_tokens=3, completion_tokens=1)
        os.kill(os.getpid(), signal.SIGINT)
        reason = "cancelled" if cancel is not None and cancel.is_set() else "length"
        yield TextChunk("", finish_reason=reason, prompt_tokens=3, completion_tokens=2)


def test_cli_ctrl_c_cancels_cleanly_and_reads_the_prompt_file(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from limamono.cli import app, engine_cmd

    monkeypatch.setattr(engine_cmd, "load_engine_for_cli", lambda *a: _ScriptedEngine())
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Mira:", encoding="utf-8")
    result = CliRunner().invoke(app, ["complete", "--file", str(prompt), "-n", "5"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "<Mira:>\n"
    assert "finish: cancelled" in result.stderr


def test_a_limamono_prompt_whose_newest_user_turn_cannot_fit_is_refused(sharp_engine):
    from limamono.core import format as fmt
    from limamono.core.conversation import Character, Conversation, Message, User
    from limamono.core.policy import PromptTooLongError
    from limamono.engine.torch_engine import Engine

    conv = Conversation(Character("Mira"), User("Sam"), "The docks.",
                        [Message("char", "Hello."), Message("user", "word " * 60)])
    prompt = fmt.render(conv, open_response=True)
    small = Engine(sharp_engine.model, sharp_engine.tokenizer, context_length=40)
    with pytest.raises(PromptTooLongError, match="fix: "):
        small.fit_prompt(prompt, 8)  # never a raw cut that loses the sheet
