"""Sampler-chain variants on the embedded model (``bench/engine.py --samplers``).

The sampler chain's share of the token time with the card's preset, with DRY+XTC added,
and with DRY+XTC and 50 banned phrases, side by side (variants interleaved in every run) on
a ~1,000-token chat prompt through layer 2 (``stream_text``); the banned-phrase filter's
time counts as sampling, and tokens regenerated after a rewind are counted separately.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time

from engine import REPO, TimedSampler, chat_setup, write_section

SAMPLER_SECTION = "## Sampler chains: `bench/engine.py --samplers --backend {backend}`"

#: 50 phrases of the kind roleplay users ban ("slop"). Three ("on and on", "the whole
#: story", "looking at") are phrases SmolLM2 writes in this chat, so that rewinds happen.
BANNED_PHRASES = (
    "shivers down her spine", "shiver down his spine", "barely above a whisper",
    "a mix of", "testament to", "ministrations", "eyes sparkling with mischief",
    "maybe, just maybe", "the air was thick", "a wave of", "her voice dripping",
    "sends shivers", "can't help but", "little did", "in the grand scheme",
    "tapestry", "palpable", "a beacon of", "unspoken", "the weight of", "steeling herself",
    "a flicker of", "with a mischievous glint", "the ball is in your court", "looking at",
    "intertwined", "the night is young", "ozone", "breath hitched", "a jolt of",
    "eyes widened", "smirk", "a low chuckle", "her heart raced", "his heart raced",
    "suddenly", "couldn't help", "as an ai", "i cannot", "on and on", "the whole story",
    "whispered", "leaned in", "a pang of", "wry smile", "knowing smile",
    "padded over", "gaze", "chuckled", "smiled",
)


class TimedFilter:
    """Sums the time of ``PhraseFilter.add`` (the banned-phrase check of every token)."""

    def __init__(self):
        self.seconds = 0.0

    def install(self):
        from limamono.engine import phrasebans

        real = phrasebans.PhraseFilter.add
        timer = self

        def add(filt, token):
            start = time.perf_counter()
            try:
                return real(filt, token)
            finally:
                timer.seconds += time.perf_counter() - start

        phrasebans.PhraseFilter.add = add
        return real


def variant_run(engine, prompt: str, settings, n: int) -> dict:
    """One layer-2 generation of ``n`` kept tokens (EOS ignored; the prompt is in the KV
    cache from the warm-up, so only its last token is evaluated): seconds, sampler seconds
    and calls, filter seconds, regenerated tokens."""
    import limamono.samplers as samplers
    from limamono.engine import phrasebans

    real = samplers.make_sampler
    timed: list[TimedSampler] = []

    def make(*args):
        timed.append(TimedSampler(real(*args)))
        return timed[-1]

    timer = TimedFilter()
    real_add = timer.install()
    rolled = engine.stats.rolled_back_tokens
    samplers.make_sampler = make
    try:
        start = time.perf_counter()
        last = list(engine.stream_text(prompt, settings, n))[-1]
        seconds = time.perf_counter() - start
    finally:
        samplers.make_sampler = real
        phrasebans.PhraseFilter.add = real_add
    return {"seconds": seconds, "sampler": timed[0].seconds, "calls": timed[0].calls,
            "filter": timer.seconds, "kept": last.completion_tokens,
            "regenerated": engine.stats.rolled_back_tokens - rolled}


def sampler_variants():
    from limamono.samplers import get_preset

    card = get_preset("limamono").replace(seed=1)
    dry_xtc = card.replace(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2,
                           xtc_probability=0.5, xtc_threshold=0.1)
    return {"card preset (`limamono`)": card, "+ DRY + XTC": dry_xtc,
            "+ DRY + XTC + 50 banned phrases": dry_xtc.replace(banned_strings=BANNED_PHRASES)}


def bench_samplers(engine, prompt: str, n: int, runs: int) -> dict[str, list[dict]]:
    """Every variant once per run, interleaved, so the machine's load hits all alike."""
    variants = sampler_variants()
    out: dict[str, list[dict]] = {name: [] for name in variants}
    saved, engine.eos_ids = engine.eos_ids, frozenset()
    try:
        for settings in variants.values():  # warm-up: prompt cached, first passes done
            variant_run(engine, prompt, settings, 4)
        for run in range(runs):
            for name, settings in variants.items():
                r = variant_run(engine, prompt, settings, n)
                out[name].append(r)
                share = (r["sampler"] + r["filter"]) / r["seconds"]
                print(f"  run {run + 1} {name}: {r['calls']} sampled, {r['regenerated']} "
                      f"regenerated, sampling {100 * share:.1f} %", flush=True)
    finally:
        engine.eos_ids = saved
    return out


def samplers_report(out: dict[str, list[dict]], args, command: str, seconds: float,
                    load: str, prompt_tokens: int) -> str:
    targets = ["<= 10 %", "", "<= 20 %"]
    lines = [
        SAMPLER_SECTION.format(backend=args.backend), "",
        f"Command (run on {dt.datetime.now(dt.UTC):%Y-%m-%d at %H:%M} UTC, {seconds:.0f} s "
        "in all):", "", f"    {command}", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other "
        f"engineers' jobs (load average before the run: {load}; the figures move with it), "
        f"threads {args.threads}, {args.engine_desc} (`--backend {args.backend}`). "
        f"Prompt: {prompt_tokens} tokens of a chat; {args.tokens} kept tokens per run; "
        f"median of {args.runs} runs, the three variants interleaved in each run.", "",
        "| variant | sampler chain per call | phrase filter per token | share of the token "
        "time | regenerated tokens (all runs) | target |", "|---|---|---|---|---|---|",
    ]
    for (name, runs), target in zip(out.items(), targets, strict=True):
        chain = statistics.median(1000 * r["sampler"] / r["calls"] for r in runs)
        filt = statistics.median(1000 * r["filter"] / r["calls"] for r in runs)
        share = statistics.median((r["sampler"] + r["filter"]) / r["seconds"] for r in runs)
        regenerated = sum(r["regenerated"] for r in runs)
        lines.append(f"| {name} | {chain:.2f} ms | {filt:.3f} ms | {100 * share:.1f} % "
                     f"| {regenerated} | {target} |")
    lines += [
        "", "Token time = the generation's wall time / tokens sampled (kept + regenerated); "
        "the prompt is in the KV cache (a warm-up run put it there), so each run evaluates "
        "only its last token before decoding, as a chat turn's regeneration would. The "
        "share counts the sampler chain (`Sampler.sample`: penalties, DRY, every filter, "
        "XTC, the draw) and the banned-phrase filter (`PhraseFilter.add`); the model's "
        "forward passes for regenerated tokens are the price of a rewind and are reported "
        "as the count of regenerated tokens, not as sampling time. DRY 0.8/1.75/2 over the "
        "whole 2048-token window, XTC 0.1/0.5; the 50 phrases are `BANNED_PHRASES` in "
        "`bench/engine_samplers.py` "
        "(three of them are phrases this model writes in this chat, so that rewinds happen; "
        "whether one comes up depends on the engine's exact logits). Per-call times are "
        "medians on a shared machine: differences under about 1 ms between rows are noise.",
        ""]
    return "\n".join(lines)


def samplers_main(args) -> int:
    options = f"--samplers --tokens {args.tokens} --runs {args.runs} --history " \
        f"{args.history} --threads {args.threads} --backend {args.backend}"
    command = ".venv/bin/python bench/engine.py " + options
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.perf_counter()

    from limamono.core import format as fmt
    from limamono.engine import load_engine

    engine = load_engine(threads=args.threads, backend=args.backend)
    if hasattr(engine, "model"):
        dtype = str(next(engine.model.parameters()).dtype).removeprefix("torch.")
        args.engine_desc = f"the torch engine, SmolLM2-135M-Instruct in {dtype} (`dtype=auto`)"
    else:
        args.engine_desc = f"the {type(engine).__name__} engine on the embedded GGUF"
    conv, _ = chat_setup(engine, args.history)
    prompt = fmt.render(conv, open_response=True)
    print(f"sampler chains: {args.runs} runs of {args.tokens} tokens", flush=True)
    out = bench_samplers(engine, prompt, args.tokens, args.runs)
    text = samplers_report(out, args, command, time.perf_counter() - started, load,
                           len(engine.tokenize(prompt)))
    print(text)
    if not args.no_write:
        write_section(text, REPO / "docs" / "BENCHMARKS.md",
                      SAMPLER_SECTION.format(backend=args.backend))
    return 0
