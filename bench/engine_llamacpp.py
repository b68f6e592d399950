"""The llama.cpp side of ``bench/engine.py``: native sampling, prefill, ContextShift, RSS.

Imported by ``bench/engine.py``, which runs everything side by side in one process (the
peak-RSS probes run in child processes, one engine each, so neither counts the other).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


#: Why the build is what it is, and what the ContextShift tolerance is (kept with the
#: figures: ``docs/BENCHMARKS.md`` is rewritten from this on every run).
BUILD_NOTE = (
    "The build: `make setup` compiles llama.cpp for the AVX2/FMA/F16C baseline with "
    "`GGML_NATIVE=OFF` and AVX512/AMX off. The native build detects AMX on these machines "
    "and segfaults in its first `llama_decode`; an AVX512 build measured the same decode "
    "speed and ~10 % faster prefill (DESIGN.md), not worth a second build variant with "
    "run-time dispatch. ContextShift is an approximation, as in KoboldCpp: the kept turns' "
    "keys were computed while the dropped turns were in view, so the next-token "
    "distribution differs from a fresh read of the same prompt by 0.02-0.10 nats (KL) in "
    "the 9 turns after the first shift of a bundled chat (bram-whitlock-01, 2,048-token "
    "context), with the same most likely token in 8 of them; "
    "`tests/test_contextshift.py` holds it under 0.1 nats after a shift, and the position "
    "shift itself (RoPE re-rotation) within f16 rounding.")


@dataclass
class LlamaResults:
    """The llama.cpp figures (and the torch ones measured the same way)."""

    ours_tps: list[float] = field(default_factory=list)  # llama.cpp + our sampler chain
    native_tps: list[float] = field(default_factory=list)  # llama.cpp's own sampler chain
    torch_tps: list[float] = field(default_factory=list)  # the torch engine, same runs
    prefill: dict[str, float] = field(default_factory=dict)  # engine -> seconds
    prefill_tokens: int = 0
    turns: list[tuple[int, float, float]] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    shift: list[tuple[int, int, float, float]] = field(default_factory=list)
    rss: dict[str, float] = field(default_factory=dict)  # engine -> MiB


def native_run(engine, ids: list[int], n: int, seed: int) -> float:
    """Seconds for ``n`` tokens with llama.cpp's own sampler chain, from a cold cache.

    The chain is the nearest native one to the ``limamono`` preset: repetition penalty
    1.11 over the last 2,048 tokens, top-p 0.85 in place of tail-free 0.85 (both sort the
    candidates; llama.cpp no longer has tail-free), temperature 1 and a seeded draw.
    """
    ll = engine._ll
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    # The binding declares (n_vocab, last_n, ...); the C function of this llama.cpp takes
    # (last_n, ...). Integers and floats travel in separate registers on x86-64, so 2048
    # twice gives last_n = 2048 under either signature.
    for sampler in (ll.llama_sampler_init_penalties(2048, 2048, 1.11, 0.0, 0.0),
                    ll.llama_sampler_init_top_p(0.85, 1), ll.llama_sampler_init_temp(1.0),
                    ll.llama_sampler_init_dist(seed)):
        ll.llama_sampler_chain_add(chain, sampler)
    for token in ids:
        ll.llama_sampler_accept(chain, token)
    engine.clear_cache()
    try:
        start = time.perf_counter()
        for begin in range(0, len(ids), 512):
            engine._decode(ids[begin:begin + 512], begin)
        pos = len(ids)
        for step in range(n):
            token = ll.llama_sampler_sample(chain, engine._ctx, -1)
            if step < n - 1:
                engine._decode([token], pos)
                pos += 1
        seconds = time.perf_counter() - start
    finally:
        ll.llama_sampler_free(chain)
        engine.clear_cache()
    return seconds


def bench_decode(engine, torch_engine, prompt: str, n: int, runs: int, res: LlamaResults,
                 ours_run) -> None:
    """Decode tok/s: llama.cpp with our chain, with its own, and torch, interleaved per run
    (the machine is shared: each run's three figures see about the same load)."""
    from limamono.samplers import get_preset

    settings = replace(get_preset("limamono"), seed=1)
    ids, torch_ids = engine.tokenize(prompt), torch_engine.tokenize(prompt)
    saved = engine.eos_ids, torch_engine.eos_ids
    engine.eos_ids = torch_engine.eos_ids = frozenset()
    try:
        ours_run(engine, ids, settings, 4)  # warm-up
        native_run(engine, ids, 4, 0)
        for run in range(runs):
            rates = []
            for measure in (lambda k: ours_run(engine, ids, settings, k)[0],
                            lambda k, run=run: native_run(engine, ids, k, run),
                            lambda k: ours_run(torch_engine, torch_ids, settings, k)[0]):
                one, full = measure(1), measure(n)
                rates.append((n - 1) / (full - one))
            res.ours_tps.append(rates[0])
            res.native_tps.append(rates[1])
            res.torch_tps.append(rates[2])
            print(f"  run {run + 1}: llama.cpp + our chain {rates[0]:.1f} tok/s, native "
                  f"chain {rates[1]:.1f} tok/s, torch {rates[2]:.1f} tok/s", flush=True)
    finally:
        engine.eos_ids, torch_engine.eos_ids = saved


def prefill_ids(engine, tokens: int) -> list[int]:
    """About ``tokens`` tokens of real prose (the bundled conversations), tokenized."""
    from limamono.core import conversation

    text = ""
    for path in sorted((REPO / "examples" / "conversations").glob("*.yaml")):
        for message in conversation.load(path)[0].messages:
            text += message.text + "\n\n"
        if len(text) > 8 * tokens:
            break
    return engine.tokenize(text)[:tokens]


def bench_prefill(engines: dict[str, object], tokens: int, res: LlamaResults) -> None:
    """Cold prefill seconds of the same ~``tokens``-token text on each engine."""
    for name, engine in engines.items():
        ids = prefill_ids(engine, tokens)
        engine.clear_cache()
        engine.prompt_logits(ids[:8])  # warm-up
        engine.clear_cache()
        start = time.perf_counter()
        engine.prompt_logits(ids)
        res.prefill[name] = time.perf_counter() - start
        res.prefill_tokens = len(ids)
        engine.clear_cache()
        print(f"  {name}: cold prefill of {len(ids)} tokens {res.prefill[name]:.2f} s",
              flush=True)


def bench_shift(context: int, turns: int, reply_tokens: int, threads: int,
                res: LlamaResults) -> None:
    """TTFT of each turn after the chat fills ``context``: ContextShift vs re-evaluation.

    Two llama.cpp engines replay the same chat, which starts ~300 tokens short of the
    context (the same replies: the shifting engine writes them, the other gets the same
    prompts); the prompt policy drops the oldest turns once the context is full. Without
    the shift the engine still reuses the common prefix (trigger and sheet), as KoboldCpp
    does, and re-reads the kept turns.
    """
    from limamono.core import format as fmt
    from limamono.core.conversation import Message
    from limamono.engine.llamacpp import LlamaCppEngine
    from limamono.models.resolve import embedded_gguf
    from limamono.samplers import get_preset

    shifting = LlamaCppEngine(embedded_gguf(), context_length=context, threads=threads)
    conv, user_lines = _chat_near(shifting, context - 300)
    reading = LlamaCppEngine(embedded_gguf(), context_length=context, threads=threads,
                             shift=False)
    settings = replace(get_preset("limamono"), seed=3)
    for turn in range(turns):
        conv = replace(conv, messages=[*conv.messages,
                                       Message("user", user_lines[turn % len(user_lines)])])
        prompt = fmt.render(conv, open_response=True)
        ttfts = []
        for engine in (shifting, reading):
            start, first = time.perf_counter(), None
            reply = []
            for chunk in engine.stream_text(prompt, settings, reply_tokens,
                                            stop=fmt.stop_strings(conv.user.name)):
                if first is None and chunk.completion_tokens:
                    first = time.perf_counter() - start
                reply.append(chunk.text)
            ttfts.append(first or 0.0)
            if engine is shifting:
                text = "".join(reply).strip() or "..."
                stats = (chunk.prompt_tokens, engine.stats.last_shifted)
        if stats[1]:
            res.shift.append((*stats, *ttfts))
            print(f"  turn {turn + 1}: prompt {stats[0]} tokens, {stats[1]} shifted out, "
                  f"TTFT {ttfts[0]:.3f} s shifted, {ttfts[1]:.3f} s re-read", flush=True)
        conv = replace(conv, messages=[*conv.messages, Message("char", text, "long")])
    shifting.close()
    reading.close()


def _chat_near(engine, tokens: int):
    """A bundled conversation cut to about ``tokens`` prompt tokens, and its user lines."""
    from limamono.core import conversation
    from limamono.core import format as fmt

    conv = conversation.load(REPO / "examples" / "conversations" / "harriet-quill-01.yaml")[0]
    kept = 2
    while kept < len(conv.messages) and len(engine.tokenize(fmt.render(
            replace(conv, messages=conv.messages[:kept + 1]), open_response=True))) < tokens:
        kept += 1
    return replace(conv, messages=list(conv.messages[:kept])), [
        m.text for m in conv.messages if m.role == "user"]


def rss_probe(backend: str, threads: int, tokens: int) -> float:
    """Peak RSS (MiB) of a child process that loads one engine, prefills and decodes.

    Read from ``VmHWM``: ``ru_maxrss`` survives ``execve`` on Linux, so a child would
    report this (large) process's peak instead of its own."""
    code = ("import sys; sys.path.insert(0, 'bench'); from engine_llamacpp import _probe; "
            f"_probe({backend!r}, {threads}, {tokens})")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rss_mib"])


def _probe(backend: str, threads: int, tokens: int) -> None:
    from limamono.engine import load_engine
    from limamono.samplers import get_preset

    engine = load_engine(threads=threads, backend=backend)
    ids = prefill_ids(engine, tokens)
    list(engine.stream_tokens(ids, get_preset("limamono"), 32))
    status = Path("/proc/self/status").read_text()
    peak_kib = int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmHWM:")))
    print(json.dumps({"rss_mib": peak_kib / 1024}))


def report_lines(res: LlamaResults, torch_turns, threads: int) -> list[str]:
    """The Markdown lines of the llama.cpp comparison."""
    ours, native = statistics.median(res.ours_tps), statistics.median(res.native_tps)
    torch = statistics.median(res.torch_tps)
    vs_torch = statistics.median(a / b for a, b in zip(res.ours_tps, res.torch_tps,
                                                       strict=True))
    overhead = statistics.median(b / a - 1 for a, b in zip(res.ours_tps, res.native_tps,
                                                           strict=True))
    best = max(res.native_tps) / max(res.ours_tps) - 1
    lines = [
        "### llama.cpp engine vs torch engine", "",
        f"The same run; llama.cpp (llama-cpp-python 0.3.36, AVX2/FMA/F16C build, "
        f"{threads} thread(s)) reads the embedded model's Q4_1 GGUF as shipped, torch the "
        "bf16 conversion. Both sample with limamono's chain (`limamono` preset).", "",
        "| measurement | result | target |", "|---|---|---|",
        f"| decode, llama.cpp + our chain (median of {len(res.ours_tps)}) | {ours:.1f} tok/s "
        "| |",
        f"| decode, llama.cpp + its own chain (nearest settings) | {native:.1f} tok/s | |",
        f"| decode, torch engine bf16 (same runs) | {torch:.1f} tok/s | |",
        f"| llama.cpp / torch (median of the per-run ratios) | {vs_torch:.2f}x | >= 2.5x |",
        f"| our chain's overhead vs native (median of the per-run ratios; best run against "
        f"best run) | {100 * overhead:.1f} %; {100 * best:.1f} % | <= 15 % |",
    ]
    for name, seconds in res.prefill.items():
        lines.append(f"| cold prefill, {res.prefill_tokens} tokens, {name} | {seconds:.2f} s "
                     "| |")
    if res.shift:
        tokens, shifted, fast, slow = res.shift[0]
        lines.append(f"| TTFT after the context fills ({tokens}-token prompt, {shifted} "
                     f"shifted out): shift / re-read | {fast:.3f} s / {slow:.3f} s = "
                     f"{slow / max(fast, 1e-9):.1f}x | >= 5x |")
    for name, mib in res.rss.items():
        lines.append(f"| peak RSS, {name} (own process: load, prefill, 32 tokens) | "
                     f"{mib:.0f} MiB | |")
    lines += ["", "Chat replay on llama.cpp (same chat, settings and user turns as the torch "
              "table above; each engine writes its own replies, so the prompt lengths differ "
              "a little):", "", "| turn | prompt tokens | reused | TTFT llama.cpp | TTFT torch |",
              "|---|---|---|---|---|"]
    for i, ((tokens, warm, _), reused) in enumerate(zip(res.turns, res.reused, strict=True)):
        other = f"{torch_turns[i][1]:.3f} s" if i < len(torch_turns) else "-"
        lines.append(f"| {i + 1} | {tokens} | {reused} | {warm:.3f} s | {other} |")
    if res.shift:
        lines += ["", "ContextShift, every turn after the context filled:", "",
                  "| prompt tokens | shifted out | TTFT shifted | TTFT re-read |",
                  "|---|---|---|---|"]
        lines += [f"| {t} | {s} | {a:.3f} s | {b:.3f} s |" for t, s, a, b in res.shift]
    lines += ["", "Decode runs (llama.cpp ours / native / torch tok/s): " + ", ".join(
        f"{a:.1f} / {b:.1f} / {c:.1f}" for a, b, c in zip(res.ours_tps, res.native_tps,
                                                          res.torch_tps, strict=True))
        + ". The native chain has no tail-free sampling (top-p stands in), so the "
        "overhead figure slightly flatters neither side. Prefill of the Q4_1 file is "
        "slower in llama.cpp than in torch bf16 on a CPU with AMX (torch uses the AMX "
        "units; the portable llama.cpp build does not); decode, which a chat with KV "
        "reuse is mostly made of, is where llama.cpp wins.", "", BUILD_NOTE, "", ""]
    return lines
