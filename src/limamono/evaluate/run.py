"""Run an evaluation: loss on held-out conversations, then replies generated and checked.

For every model variant (the base with each adapter, ``none`` = the bare base) this computes
the mean loss and perplexity over the supervised tokens of the held-out conversations
(the same masks as training), then generates a reply at character turns of those
conversations for each requested length, with the ``limamono`` preset and fixed seeds, and
checks each reply (``metrics.check_reply``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limamono.core.conversation import LENGTHS, Conversation
from limamono.core.policy import POLICIES, PromptPolicy, reply_token_budget
from limamono.evaluate.intervals import trials_for_half_width
from limamono.evaluate.metrics import TARGETS, BehaviourSummary, Sample, check_reply, summarize
from limamono.models import adapter_card
from limamono.models.adapter_card import Defaults

log = logging.getLogger("limamono.eval")

#: Replies needed so that the 95 % Wilson interval of the impersonation rate is narrower
#: than ±5 points when the observed rate sits at its 5 % target: 83.
REQUIRED_REPLIES = trials_for_half_width(TARGETS["impersonation_rate"][1] or 0.05, 0.05)
DEFAULT_LENGTHS: tuple[str, ...] = ("short", "long", "massive")


def samples_for(lengths: Sequence[str], replies: int = REQUIRED_REPLIES) -> int:
    """Prompts per length that give at least ``replies`` replies over ``lengths``."""
    return math.ceil(replies / max(len(lengths), 1))


#: Engines that can generate an eval's replies (the loss is always computed on torch).
EVAL_BACKENDS: tuple[str, ...] = ("torch", "llamacpp")

#: ``limamono eval --quick``: a CI-sized run (figures too wide to judge any target).
QUICK_SAMPLES = 2
QUICK_MAX_TOKENS = 64


@dataclass(frozen=True)
class EvalConfig:
    """What ``limamono eval`` runs.

    Attributes:
        data: folder of conversation files; those with ``meta.split: eval`` are used (all of
            them when none is marked).
        model: base model name or path.
        adapters: adapter names or folders to compare; ``none`` is the bare base model.
        lengths: requested response lengths (at least two for the Spearman figure).
        samples: prompts per length (character turns, spread over the conversations; when
            there are fewer turns than prompts, turns are reused with the next seeds). The
            default gives ``REQUIRED_REPLIES`` replies over the default lengths.
        seed: base seed; prompt k uses ``seed + k`` for every variant, so they are paired.
        max_new_tokens: cap on the token budget of any reply.
        preset: sampler preset (None: each adapter's own, from its card, else ``limamono``).
        policy: prompt policy (None: each adapter's own, else ``training``).
        seq_len: sequence length for the loss (longer conversations are windowed).
        dtype: model dtype (``auto``, ``bf16``, ``fp32``); on CPUs without native bf16,
            ``fp32`` evaluates long prompts several times faster.
        threads: torch threads (None: torch's default).
        soft_landing: as each variant's samplers say (the ``limamono`` preset: on); False
            turns the soft landing off for every variant (``--no-soft-landing``).
        backend: the engine that generates the replies, ``torch`` or ``llamacpp`` (the
            embedded GGUF with the adapter as a GGUF LoRA: several times faster on a CPU).
            The loss is always computed on torch. Replies of the two backends differ for
            the same seed (other kernels), so only reports of one backend are paired.
    """

    data: Path
    model: str = "smollm2-135m"
    adapters: tuple[str, ...] = ("none",)
    lengths: tuple[str, ...] = DEFAULT_LENGTHS
    samples: int = samples_for(DEFAULT_LENGTHS)
    seed: int = 1234
    max_new_tokens: int = 320
    preset: str | None = None
    policy: str | None = None
    seq_len: int = 2048
    dtype: str = "auto"
    threads: int | None = None
    soft_landing: bool = True
    backend: str = "torch"

    def __post_init__(self) -> None:
        problems = [f"length {x!r} is not one of {', '.join(LENGTHS)}"
                    for x in self.lengths if x not in LENGTHS]
        if not self.adapters:
            problems.append("at least one adapter (or 'none') is needed")
        if self.samples < 1:
            problems.append(f"samples must be >= 1, got {self.samples}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.policy is not None and self.policy not in POLICIES:
            problems.append(f"policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.backend not in EVAL_BACKENDS:
            problems.append(f"backend {self.backend!r} is not one of {', '.join(EVAL_BACKENDS)}")
        if problems:
            raise ValueError("invalid eval config: " + "; ".join(problems))


@dataclass(frozen=True)
class Prompt:
    """A generation prompt: a conversation cut before a character turn."""

    conversation: Conversation
    turn: int
    requested_length: str
    seed: int

    @property
    def history(self) -> list[str]:
        return [m.text for m in self.conversation.messages]


@dataclass
class VariantResult:
    """Figures of one model variant.

    ``source``: the earlier report it was read from (``--with-report``); empty when this
    run generated it.
    """

    adapter: str
    eval_loss: float | None
    perplexity: float | None
    supervised_tokens: int
    behaviour: BehaviourSummary | None
    samples: list[Sample] = field(default_factory=list)
    source: str = ""


def held_out(data: Path) -> list[Conversation]:
    """The conversations marked ``meta.split: eval`` under ``data`` (all when none is)."""
    from limamono.core import conversation as conv_mod

    files = sorted(p for p in Path(data).rglob("*") if p.suffix in (".yaml", ".yml", ".jsonl"))
    if not files:
        raise FileNotFoundError(f"{data}: no conversation files (.yaml, .yml, .jsonl)")
    convs = [c for p in files for c in conv_mod.load(p)]
    marked = [c for c in convs if c.meta.get("split") == "eval"]
    return marked or convs


def make_prompts(conversations: Sequence[Conversation], config: EvalConfig) -> list[Prompt]:
    """Prompts at character turns after the greeting, ``samples`` per requested length.

    Turns are taken round-robin over the conversations (seeded), so a small ``samples``
    still covers every conversation; past the last turn the round-robin starts again, and
    prompt k's seed ``seed + k`` makes each reuse a new draw. The history is labelled when
    it is rendered, by each variant's prompt policy.
    """
    rng = random.Random(config.seed)
    per_conv = []
    for conv in conversations:
        turns = [i for i, m in enumerate(conv.messages) if m.role == "char" and i > 0]
        rng.shuffle(turns)
        per_conv.append([(conv, i) for i in turns])
    # Round-robin: first a turn of every conversation, then a second one of each, ...
    slots = [row[r] for r in range(max(map(len, per_conv), default=0))
             for row in per_conv if r < len(row)]
    chosen = [slots[k % len(slots)] for k in range(config.samples)] if slots else []
    prompts = []
    for k, (conv, turn) in enumerate(chosen):
        cut = Conversation(conv.character, conv.user, conv.scenario, conv.messages[:turn],
                           conv.meta)
        for length in config.lengths:
            prompts.append(Prompt(cut, turn, length, config.seed + k))
    return prompts


token_budget = reply_token_budget  # the policy decides what a length label may take


def prompts_digest(config: EvalConfig) -> str:
    """SHA-256 of every prompt this config generates at (history, turn, length, seed):
    two reports with the same digest asked their variants the same questions."""
    from limamono.core import format as fmt

    digest = hashlib.sha256()
    for prompt in make_prompts(held_out(config.data), config):
        digest.update(json.dumps([fmt.render(prompt.conversation), prompt.turn,
                                  prompt.requested_length, prompt.seed]).encode())
    return digest.hexdigest()


def variant_defaults(config: EvalConfig, adapter: str) -> Defaults:
    """The prompt policy and samplers of one variant: the options, else its adapter's card.

    An option that overrides the card is logged (``limamono.eval``).
    """
    from limamono.models.resolve import resolve_adapter

    chosen = adapter_card.defaults(resolve_adapter(adapter, config.model),
                                   preset=config.preset, policy=config.policy)
    for note in chosen.notes:
        log.warning("%s: %s", adapter, note)
    return chosen


def generate_samples(engine: Any, prompts: Sequence[Prompt], config: EvalConfig,
                     progress: Callable[[int], None] | None = None,
                     defaults: Defaults | None = None) -> list[Sample]:
    """Generate and check one reply per prompt, under the variant's policy and samplers."""
    chosen = defaults or adapter_card.defaults(None, config.preset, config.policy)
    policy = chosen.policy
    samplers = chosen.samplers if config.soft_landing \
        else chosen.samplers.replace(soft_landing=False)
    out = []
    for prompt in prompts:
        conv = prompt.conversation
        text = policy.render(conv, response_length=prompt.requested_length)
        budget = token_budget(prompt.requested_length, config.max_new_tokens,
                              policy.length_bounds)
        done = engine.generate(text, samplers.replace(seed=prompt.seed), budget,
                               stop=policy.stop_strings(conv.user.name))
        check = check_reply(done.text, char_name=conv.character.name,
                            user_name=conv.user.name, history=prompt.history,
                            stop_string=done.stop_string,
                            truncated=done.finish_reason == "length")
        out.append(Sample(prompt.requested_length, done.text, check, done.finish_reason))
        if progress:
            progress(1)
    return out


def eval_loss(model: Any, tokenizer: Any, data: Path, seq_len: int,
              policy: PromptPolicy | None = None) -> tuple[float, int]:
    """Mean cross-entropy over the supervised tokens of the held-out samples.

    Returns (loss, supervised token count). Masks come from the dataset builder, with the
    adapter's trigger and length bounds (``policy``), so this is exactly the loss the
    trainer reports on its eval split.
    """
    import torch

    from limamono.dataset.build import BuildConfig, build

    policy = policy or PromptPolicy()
    result = build(str(data), tokenizer, BuildConfig(
        seq_len=seq_len, val=0.0, trigger=policy.trigger, length_bounds=policy.length_bounds))
    samples = [s for s in result.samples if s.split == "eval"] or result.samples
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for sample in samples:
            ids = torch.tensor([sample.input_ids])
            labels = torch.tensor([sample.labels])
            logits = model(input_ids=ids).logits.float()
            # Shift: the logit at position t predicts token t+1.
            loss = torch.nn.functional.cross_entropy(
                logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
            total += loss.item()
            count += int((labels[0, 1:] != -100).sum())
    if count == 0:
        raise ValueError(f"{data}: the held-out conversations have no supervised tokens")
    return total / count, count


def evaluate_variant(engine: Any, adapter: str, conversations: Sequence[Conversation],
                     config: EvalConfig,
                     progress: Callable[[int], None] | None = None,
                     loss_engine: Any = None) -> VariantResult:
    """Loss and behaviour of one loaded engine (its adapter's policy and samplers).

    ``loss_engine``: a torch engine of the same variant for the loss (default: ``engine``).
    """
    chosen = variant_defaults(config, adapter)
    scorer = engine if loss_engine is None else loss_engine
    loss, tokens = eval_loss(scorer.model, scorer.tokenizer, config.data, config.seq_len,
                             chosen.policy)
    samples = generate_samples(engine, make_prompts(conversations, config), config, progress,
                               chosen)
    return VariantResult(adapter, loss, math.exp(loss), tokens,
                         summarize(samples, seed=config.seed), samples)


def run(config: EvalConfig, progress: Callable[[str, int, int], None] | None = None,
        load: Callable[[str, str], Any] | None = None,
        load_loss: Callable[[str, str], Any] | None = None) -> list[VariantResult]:
    """Evaluate every variant in turn (one variant's models in memory at a time).

    Args:
        config: what to evaluate.
        progress: called as ``progress(variant, done, total)`` with ``done`` 0 when a
            variant starts (its clock starts there), then after each reply.
        load: ``load(model, adapter) -> engine`` on ``config.backend``, which generates;
            defaults to ``limamono.engine.load_engine``.
        load_loss: the torch engine for the loss when ``config.backend`` is not torch
            (default ``load_engine(..., backend="torch")``); on torch the one engine does both.
    """
    from limamono.models.resolve import resolve_adapter

    def load_on(backend: str) -> Callable[[str, str], Any]:
        from limamono.engine import load_engine

        def loader(model: str, adapter: str) -> Any:
            return load_engine(model=model, adapter=resolve_adapter(adapter),
                               dtype=config.dtype, threads=config.threads, backend=backend)
        return loader

    if load is None:
        load = load_on(config.backend)
    if load_loss is None and config.backend != "torch":
        load_loss = load_on("torch")

    conversations = held_out(config.data)
    total = len(make_prompts(conversations, config))
    results = []
    for adapter in config.adapters:
        engine = load(config.model, adapter)
        done = 0
        if progress:
            progress(adapter, 0, total)

        def tick(n: int, adapter: str = adapter) -> None:
            nonlocal done
            done += n
            if progress:
                progress(adapter, done, total)

        scorer = None if load_loss is None else load_loss(config.model, adapter)
        results.append(evaluate_variant(engine, adapter, conversations, config, tick, scorer))
        del engine, scorer
    return results
