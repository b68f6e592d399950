"""Engine benchmark on the embedded model: decode speed, chat-turn latency, sampler share.

Three measurements, side by side in one run (``make bench`` runs it with the defaults):

1. Decode tokens/s of the engine with the ``limamono`` preset against transformers'
   ``model.generate()`` with its nearest built-in settings (do_sample, temperature 1,
   repetition_penalty 1.11, top_k 0, top_p 1; it has no tail-free sampling). Decode rate
   = (N - 1) / (time for N tokens - time for 1 token), so the prompt's prefill is excluded
   for both; median of ``--runs`` runs, both sides interleaved so machine load hits both.
2. A chat replay: a ~1,500-token sheet + history prompt rendered with ``format.render``,
   then ``--turns`` turns that each add a user message and a ``--reply-tokens`` reply.
   Time to first token (TTFT) on every turn with KV-cache reuse, and without (the same
   prompt on an engine that keeps no cache) on turn 1, every ``--cold-every``-th turn and
   the last (each costs a whole prefill).
3. The sampler chain's time per token as a share of the whole token time, measured inside
   the decode runs of (1) by timing every ``Sampler.sample`` call.

Then the llama.cpp engine on the embedded model's GGUF, in the same run
(``bench/engine_llamacpp.py``): decode with our chain against the torch engine and against
llama.cpp's own sampler chain, cold prefill of ~2,000 tokens on both engines, the same chat
replay, ContextShift against re-reading once a chat fills the context, and the peak RSS of
each engine in a process of its own.

``--samplers`` runs only a fourth measurement and writes its own section: the sampler
chain's share of the token time with the card's preset, with DRY+XTC added, and with DRY+XTC
and 50 banned phrases, side by side (variants interleaved in every run) on a ~1,000-token
chat prompt through layer 2 (``stream_text``); the banned-phrase filter's time counts as
sampling, and tokens regenerated after a rewind are counted separately.

Results go to stdout and replace the engine section of ``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import engine_llamacpp as llama
from engine_llamacpp import LlamaResults

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Engine and samplers: `bench/engine.py`"
DTYPE_NOTE = (
    "The dtype table is why `--dtype auto` is bf16 only on CPUs with native bf16 (see "
    "`bench/dtype.py`): bf16 decodes faster "
    "but, on a CPU without native bf16 matrix units, evaluates prompts several times slower "
    "than fp32. KV-cache reuse keeps chat prompts short, so chat and serving gain; work "
    "that is all prefill (a first turn on a long sheet, evaluation loss, one-shot prompts) "
    "is faster with `--dtype fp32`.")


@dataclass
class Results:
    """Everything the report needs."""

    engine_tps: list[float] = field(default_factory=list)
    hf_tps: list[float] = field(default_factory=list)
    sampler_share: list[float] = field(default_factory=list)
    sampler_ms: list[float] = field(default_factory=list)
    turns: list[tuple[int, float, float]] = field(default_factory=list)  # tokens, reuse, none
    reused: list[int] = field(default_factory=list)
    dtypes: dict[str, tuple[float, float]] = field(default_factory=dict)  # prefill s, tok/s


class TimedSampler:
    """Wraps a sampler and sums the time spent in ``sample``."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def sample(self, context_ids, logits, generator=None):
        start = time.perf_counter()
        token = self.inner.sample(context_ids, logits, generator)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return token


def engine_run(engine, ids, settings, n: int) -> tuple[float, TimedSampler]:
    """Seconds for ``n`` tokens from a cold cache, and the timed sampler used."""
    import limamono.samplers as samplers

    real = samplers.make_sampler
    timed: list[TimedSampler] = []

    def make(*args, **kwargs):
        timed.append(TimedSampler(real(*args, **kwargs)))
        return timed[-1]

    engine.clear_cache()
    samplers.make_sampler = make
    try:
        start = time.perf_counter()
        count = sum(1 for _ in engine.stream_tokens(ids, settings, n))
        seconds = time.perf_counter() - start
    finally:
        samplers.make_sampler = real
    assert count == n, f"engine stopped after {count} of {n} tokens"
    return seconds, timed[0]


def hf_run(model, ids, n: int, seed: int) -> float:
    """Seconds for ``n`` tokens with ``model.generate`` (EOS suppressed by min_new_tokens)."""
    import torch

    torch.manual_seed(seed)
    input_ids = torch.tensor([ids])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             do_sample=True, temperature=1.0, repetition_penalty=1.11,
                             top_k=0, top_p=1.0, max_new_tokens=n, min_new_tokens=n,
                             pad_token_id=2)
    seconds = time.perf_counter() - start
    assert out.shape[1] - len(ids) == n
    return seconds


def bench_decode(engine, prompt: str, n: int, runs: int, res: Results) -> None:
    """(1) and (3): decode rates of both loops and the sampler's share of the token time."""
    from limamono.samplers import get_preset

    ids = engine.tokenize(prompt)
    settings = replace(get_preset("limamono"), seed=1)
    saved, engine.eos_ids = engine.eos_ids, frozenset()  # always N tokens, as min_new_tokens
    try:
        engine_run(engine, ids, settings, 4)  # warm-up: first passes are slow
        hf_run(engine.model, ids, 4, 0)
        for run in range(runs):
            one, _ = engine_run(engine, ids, settings, 1)
            full, timed = engine_run(engine, ids, settings, n)
            res.engine_tps.append((n - 1) / (full - one))
            res.sampler_share.append(timed.seconds / full)
            res.sampler_ms.append(1000 * timed.seconds / timed.calls)
            hf_one = hf_run(engine.model, ids, 1, run)
            hf_full = hf_run(engine.model, ids, n, run)
            res.hf_tps.append((n - 1) / (hf_full - hf_one))
            print(f"  run {run + 1}: engine {res.engine_tps[-1]:.1f} tok/s, generate() "
                  f"{res.hf_tps[-1]:.1f} tok/s, sampler {res.sampler_ms[-1]:.2f} ms/token",
                  flush=True)
    finally:
        engine.eos_ids = saved


def bench_dtypes(engine, tokens: int, res: Results) -> None:
    """(4): prefill seconds for ``tokens`` tokens and greedy decode tok/s, bf16 vs fp32.

    The ``auto`` dtype is bf16 on CPU because decoding is faster; this shows the other side
    of the trade (prefill, which the KV-cache reuse mostly avoids in a chat).
    """
    import torch

    from limamono.engine.torch_engine import Engine
    from limamono.samplers import get_preset

    ids = list(range(1000, 1000 + tokens))
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        model = engine.model if dtype == engine.model.dtype else \
            copy.deepcopy(engine.model).to(dtype)
        probe = Engine(model, engine.tokenizer, cache_entries=0)
        probe.eos_ids = frozenset()
        list(probe.stream_tokens(ids[:8], get_preset("greedy"), 2))  # warm-up
        start = time.perf_counter()
        list(probe.stream_tokens(ids, get_preset("greedy"), 1))
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        list(probe.stream_tokens(ids, get_preset("greedy"), 33))
        rate = 32 / (time.perf_counter() - start - prefill)
        res.dtypes[name] = (prefill, rate)
        print(f"  {name}: prefill of {tokens} tokens {prefill:.2f} s, decode {rate:.1f} tok/s",
              flush=True)


def chat_setup(engine, history_tokens: int):
    """A conversation whose open prompt is about ``history_tokens`` long, and user lines."""
    from limamono.core import conversation
    from limamono.core import format as fmt

    conv = conversation.load(REPO / "examples" / "conversations" / "harriet-quill-01.yaml")[0]
    messages = list(conv.messages)
    user_lines = [m.text for m in messages if m.role == "user"]
    kept: list = []
    for message in messages:
        kept.append(message)
        trial = replace(conv, messages=kept)
        if len(engine.tokenize(fmt.render(trial, open_response=True))) >= history_tokens \
                and message.role == "char":
            break
    return replace(conv, messages=kept), user_lines


def bench_chat(engine, cold_engine, turns: int, reply_tokens: int, history: int,
               cold_every: int, res: Results | LlamaResults) -> None:
    """(2): TTFT per turn with reuse (a real chat) and without (same prompt, no cache)."""
    from limamono.core import format as fmt
    from limamono.core.conversation import Message
    from limamono.samplers import get_preset

    conv, user_lines = chat_setup(engine, history)
    settings = replace(get_preset("limamono"), seed=7)
    engine.clear_cache()
    engine.generate(fmt.render(conv, open_response=True), settings, 1)  # the chat's start
    for turn in range(turns):
        line = user_lines[turn % len(user_lines)]
        conv = replace(conv, messages=[*conv.messages, Message("user", line, "tiny")])
        prompt = fmt.render(conv, open_response=True)
        start = time.perf_counter()
        ttft, parts = None, []
        for chunk in engine.stream_text(prompt, settings, reply_tokens,
                                        stop=fmt.stop_strings(conv.user.name)):
            if ttft is None and chunk.completion_tokens:
                ttft = time.perf_counter() - start
            parts.append(chunk.text)
        reused, prompt_tokens = engine.stats.last_reused, chunk.prompt_tokens
        cold = math.nan
        if turn == 0 or turn == turns - 1 or (turn + 1) % cold_every == 0:
            start = time.perf_counter()
            cold_engine.generate(prompt, settings, 1)  # the same prompt, evaluated whole
            cold = time.perf_counter() - start
        text = "".join(parts).strip() or "..."
        # Keep the label the turn was asked with, as a chat does: a history header that
        # changed from the open one would break the common prefix 11 tokens early.
        conv = replace(conv, messages=[*conv.messages, Message("char", text, "long")])
        res.turns.append((prompt_tokens, ttft or 0.0, cold))
        res.reused.append(reused)
        print(f"  turn {turn + 1}: prompt {prompt_tokens} tokens ({reused} reused), TTFT "
              f"{ttft or 0:.3f} s with reuse, {cold:.3f} s without", flush=True)


def report(res: Results, args: argparse.Namespace, command: str, seconds: float,
           load: str, llama_res: LlamaResults | None = None) -> str:
    """The Markdown section for docs/BENCHMARKS.md."""
    eng, hf = statistics.median(res.engine_tps), statistics.median(res.hf_tps)
    share = statistics.median(res.sampler_share)
    last = res.turns[-1]
    lines = [
        SECTION, "",
        f"Command (run on {dt.datetime.now(dt.UTC):%Y-%m-%d at %H:%M} UTC, {seconds:.0f} s "
        "in all):", "", f"    {command}", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other "
        f"engineers' jobs (load average before the run: {load}), torch threads "
        f"{args.threads}, SmolLM2-135M-Instruct converted to bf16 (`dtype=auto`).", "",
        "| measurement | result | target |", "|---|---|---|",
        f"| decode, engine + `limamono` preset (median of {args.runs}, {args.tokens} tokens) "
        f"| {eng:.1f} tok/s | |",
        f"| decode, `model.generate()` nearest settings (same runs) | {hf:.1f} tok/s | |",
        f"| engine / generate() | {eng / hf:.2f}x | >= 1.0x |",
        f"| TTFT at turn {len(res.turns)} with reuse ({last[0]}-token prompt) "
        f"| {last[1]:.3f} s | |",
        f"| TTFT at turn {len(res.turns)} without reuse | {last[2]:.3f} s | |",
        f"| reuse speed-up at turn {len(res.turns)} | {last[2] / max(last[1], 1e-9):.1f}x "
        "| >= 5x |",
        f"| sampler chain per token (median) | {statistics.median(res.sampler_ms):.2f} ms, "
        f"{100 * share:.1f} % of the token time | <= 10 % |", "",
        f"Chat replay ({len(res.turns)} turns, up to {args.reply_tokens} reply tokens each, "
        "stop strings on; the 'without' column is the same prompt on an engine that keeps "
        "no cache):", "",
        "| turn | prompt tokens | reused | TTFT with reuse | TTFT without |",
        "|---|---|---|---|---|",
    ]
    for i, ((tokens, warm, cold), reused) in enumerate(zip(res.turns, res.reused,
                                                           strict=True)):
        without = "not measured" if math.isnan(cold) else f"{cold:.3f} s"
        lines.append(f"| {i + 1} | {tokens} | {reused} | {warm:.3f} s | {without} |")
    lines += ["", f"bf16 vs fp32 (the same weights, greedy, {args.dtype_tokens}-token prompt, "
              "no cache):", "", "| dtype | prefill | decode |", "|---|---|---|"]
    lines += [f"| {name} | {pre:.2f} s | {rate:.1f} tok/s |"
              for name, (pre, rate) in res.dtypes.items()]
    lines += ["", "Decode runs (engine / generate() tok/s): " + ", ".join(
        f"{a:.1f} / {b:.1f}" for a, b in zip(res.engine_tps, res.hf_tps, strict=True)) + ".",
        "Notes: decode rate = (N-1)/(t(N) - t(1)), so prefill is excluded on both sides; "
        "EOS is ignored on both sides (generate() through min_new_tokens) so every run "
        "makes N tokens. generate() has no tail-free sampling, so the engine's chain does "
        "more work per token (one sort of the 49,152 logits). Sampler time is measured "
        "around every `Sampler.sample` call of the engine's decode runs.", "",
        DTYPE_NOTE, ""]
    if llama_res is not None:
        lines += llama.report_lines(llama_res, res.turns, args.threads)
    return "\n".join(lines)


def write_section(text: str, path: Path, section: str = SECTION) -> None:
    """Replace (or append) this benchmark's section of docs/BENCHMARKS.md."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = old.find(section)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(section))
        new = old[:start] + text + (old[end + 1:] if end >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=96, help="decode tokens per run")
    parser.add_argument("--runs", type=int, default=3, help="decode runs (median)")
    parser.add_argument("--turns", type=int, default=12, help="chat turns")
    parser.add_argument("--reply-tokens", type=int, default=150, help="tokens per reply")
    parser.add_argument("--history", type=int, default=1500, help="tokens before turn 1")
    parser.add_argument("--cold-every", type=int, default=6, help="measure TTFT without "
                        "reuse on turn 1, the last turn and every Nth turn (it costs a whole "
                        "prefill: ~30-70 s each here)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (on the "
                        "shared 2-core VM, 2 threads ran 10-20x slower than 1)")
    parser.add_argument("--dtype-tokens", type=int, default=512, help="prompt tokens of "
                        "the bf16/fp32 prefill comparison")
    parser.add_argument("--prefill-tokens", type=int, default=2000, help="cold prefill "
                        "prompt of the llama.cpp/torch comparison")
    parser.add_argument("--shift-context", type=int, default=2048, help="context of the "
                        "ContextShift replay")
    parser.add_argument("--shift-turns", type=int, default=12, help="turns of that replay "
                        "(it starts ~300 tokens short of the context)")
    parser.add_argument("--no-llamacpp", action="store_true", help="torch engine only")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--samplers", action="store_true", help="only the sampler-chain "
                        "comparison (card preset, +DRY+XTC, +50 banned phrases); uses "
                        "--tokens, --runs, --history, --threads and --backend")
    parser.add_argument("--backend", default="auto", help="engine for --samplers: auto, "
                        "torch or llamacpp")
    args = parser.parse_args(argv)
    if args.samplers:
        import engine_samplers

        return engine_samplers.samplers_main(args)
    options = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
               if k not in ("no_write", "no_llamacpp", "samplers", "backend")]
    command = ".venv/bin/python bench/engine.py " + " ".join(options)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.perf_counter()

    from limamono.engine import load_engine
    from limamono.engine.torch_engine import Engine

    engine = load_engine(threads=args.threads, backend="torch")
    res = Results()
    print(f"decode: {args.runs} runs of {args.tokens} tokens", flush=True)
    bench_decode(engine, chat_prompt_short(), args.tokens, args.runs, res)
    print(f"chat replay: {args.turns} turns", flush=True)
    cold = Engine(engine.model, engine.tokenizer, engine.model_name, cache_entries=0)
    bench_chat(engine, cold, args.turns, args.reply_tokens, args.history, args.cold_every,
               res)
    print(f"dtypes: prefill of {args.dtype_tokens} tokens and decode, bf16 vs fp32", flush=True)
    bench_dtypes(engine, args.dtype_tokens, res)
    llama_res = None if args.no_llamacpp else bench_llamacpp(engine, args)
    text = report(res, args, command, time.perf_counter() - started, load, llama_res)
    print(text)
    if not args.no_write:
        write_section(text, REPO / "docs" / "BENCHMARKS.md")
    return 0


def bench_llamacpp(torch_engine, args: argparse.Namespace) -> LlamaResults:
    """The llama.cpp engine on the embedded GGUF, measured as the torch engine was."""
    from limamono.engine import load_engine

    engine = load_engine(threads=args.threads, backend="llamacpp")
    res = LlamaResults()
    print(f"llama.cpp decode: {args.runs} runs of {args.tokens} tokens", flush=True)
    llama.bench_decode(engine, torch_engine, chat_prompt_short(), args.tokens, args.runs,
                       res, engine_run)
    print(f"cold prefill of ~{args.prefill_tokens} tokens", flush=True)
    llama.bench_prefill({"llama.cpp": engine, "torch bf16": torch_engine},
                        args.prefill_tokens, res)
    print(f"llama.cpp chat replay: {args.turns} turns", flush=True)
    cold = load_engine(threads=args.threads, backend="llamacpp", cache_entries=0)
    bench_chat(engine, cold, args.turns, args.reply_tokens, args.history, args.cold_every,
               res)
    cold.close()
    engine.close()
    print(f"ContextShift: {args.shift_turns} turns in a {args.shift_context}-token context",
          flush=True)
    llama.bench_shift(args.shift_context, args.shift_turns, 48, args.threads, res)
    for backend in ("llamacpp", "torch"):
        res.rss[backend] = llama.rss_probe(backend, args.threads, args.prefill_tokens)
        print(f"  peak RSS {backend}: {res.rss[backend]:.0f} MiB", flush=True)
    return res


def chat_prompt_short() -> str:
    """A short Limamono prompt (about 150 tokens) for the decode runs."""
    from limamono.core import format as fmt
    from limamono.core.conversation import Character, Conversation, Message, User

    conv = Conversation(
        character=Character("Mira", "Mira\nAge: 34\nOccupation: harbour pilot\nMira guides "
                            "ships through the narrow channel at Skellport. She is patient, "
                            "dry-humoured and notices everything about the weather."),
        user=User("Sam"), scenario="Sam has just arrived at the pilot house in a storm.",
        messages=[Message("char", "Mira looked up from the tide tables. \"You picked a fine "
                          "night for it,\" she said, pushing a chair toward the stove."),
                  Message("user", "\"Is the channel open?\" Sam asked, dripping.")])
    return fmt.render(conv, open_response=True)




if __name__ == "__main__":
    sys.exit(main())
