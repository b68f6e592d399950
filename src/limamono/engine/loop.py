"""What every engine shares: the decode loop, the rollback stream and layers 2-3.

Three layers (DESIGN.md "Layers of generation"), each built on the one below:

1. :meth:`EngineBase.stream_tokens`: token ids from one decode loop, written once here. An
   engine supplies only its KV cache, as a :class:`KVSlot` that holds the tokens of one
   conversation: :meth:`EngineBase._open_slot` picks a cached slot sharing the longest
   prefix with the new prompt (or shifts one, ContextShift) and the loop evaluates only the
   tokens after it. The stream can also roll back (:meth:`TokenStream.rollback`): drop its
   last tokens from the cache and sample that position again, with some tokens banned.
2. :meth:`EngineBase.stream_text`: fits the prompt to the context, detokenises incrementally
   (never half a UTF-8 character), applies stop strings, and ends with a
   :class:`~limamono.engine.protocol.TextChunk` that carries the finish reason and token counts.
3. :meth:`EngineBase.generate`: the joined text as a :class:`~limamono.engine.protocol.Completion`.

An engine runs :attr:`EngineBase.parallel` streams at once (a semaphore; 1 for torch): a
server runs that many worker threads, each stream to its end, and queues the other
requests. Each stream is a resumable step of the same loop: with several slots the llama.cpp
engine's :meth:`KVSlot.eval` waits until the other open slots have their next tokens too and
evaluates them all in one batch (continuous batching), while each stream keeps its own
sampler chain, seed, bans and rollback. A thread that starts a stream while its own earlier
stream is still open gets a RuntimeError instead of a deadlock, so do not hand
half-consumed streams between pool threads that may also start new ones.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Collection, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from limamono.core import policy
from limamono.core.policy import ContextOverflowError
from limamono.engine.phrasebans import PhraseFilter
from limamono.engine.protocol import (
    Completion,
    FinishReason,
    GrammarError,
    TextChunk,
    TokenLogprob,
    Truncation,
)
from limamono.engine.textstream import IncrementalDecoder, StopMatcher

if TYPE_CHECKING:
    import torch

    from limamono.samplers import SamplerSettings
    from limamono.samplers.candidates import Stage
    from limamono.samplers.settings import Grammar
    from limamono.samplers.vocab import Vocabulary

#: Prompt tokens evaluated per forward pass during prefill (bounds the attention memory).
PREFILL_CHUNK = 512
#: The fewest prompt tokens per forward pass while a stream reads its prompt.
MIN_PREFILL_CHUNK = 16
#: A stream reading its prompt checks for cancellation about this often (seconds): its
#: chunks are sized from the measured time per prompt token (issue 24: 512-token chunks
#: took 11 s each on a loaded machine, and a dropped client held the engine that long).
CANCEL_CHECK_S = 0.25


def prefill_chunk(seconds_per_token: float | None) -> int:
    """Prompt tokens for the next forward pass of a stream: a power of two between
    ``MIN_PREFILL_CHUNK`` and ``PREFILL_CHUNK`` that takes about ``CANCEL_CHECK_S``
    (``MIN_PREFILL_CHUNK`` before anything was measured)."""
    if seconds_per_token is None or seconds_per_token <= 0:
        return MIN_PREFILL_CHUNK if seconds_per_token is None else PREFILL_CHUNK
    fits = int(CANCEL_CHECK_S / seconds_per_token)
    size = 1 << max(fits, 1).bit_length() - 1
    return max(MIN_PREFILL_CHUNK, min(PREFILL_CHUNK, size))


def prefill_end(begin: int, size: int, total: int) -> int:
    """Where the prompt chunk that starts at ``begin`` ends: after at most ``size`` tokens,
    and never with the prompt's last token inside a chunk of several: that token is always
    read alone (a batch of one row).

    Its row gives the first reply token's logits, and llama.cpp's quantized kernels round
    a row of a large batch differently from a row read alone (docs/ARCHITECTURE.md, "Greedy
    output and the cache"). A cached prompt, an ``n``-choice fork and a restored state read
    exactly that one token, so a cold read does too: greedy and seeded replies are then the
    same whichever way the prompt's KV cache came about.
    """
    if begin >= total - 1:
        return total
    return min(begin + size, total - 1)


class Cancelled(Exception):
    """An evaluation stopped half-way because its stream's cancel event was set (an
    engine that can interrupt a forward pass raises it; the slot's cache is spoiled)."""

@dataclass
class CacheStats:
    """Prompt-token counters of the KV-cache reuse (for tests and the benchmark).

    Attributes:
        reused_tokens: Prompt tokens taken from a cache, summed over all calls.
        evaluated_tokens: Prompt tokens run through the model (prefill), summed.
        shifted_tokens: Cached tokens dropped from the middle by ContextShift, summed.
        last_reused: ``reused_tokens`` of the latest call.
        last_evaluated: ``evaluated_tokens`` of the latest call.
        last_shifted: ``shifted_tokens`` of the latest call.
        rolled_back_tokens: Reply tokens taken back by the banned-phrase filter and sampled
            again (regenerated tokens), summed.
    """

    reused_tokens: int = 0
    evaluated_tokens: int = 0
    shifted_tokens: int = 0
    last_reused: int = 0
    last_evaluated: int = 0
    last_shifted: int = 0
    rolled_back_tokens: int = 0


class KVSlot(Protocol):
    """One conversation's KV cache in an engine (layer 1's only engine-specific part)."""

    def eval(self, ids: Sequence[int]) -> torch.Tensor:
        """Run ``ids`` after the cached tokens; next-token logits [vocab], fp32 on CPU."""
        ...

    def crop(self, keep: int) -> None:
        """Keep only the first ``keep`` cached tokens."""
        ...


class GrammarState(Protocol):
    """One stream's grammar (``settings.grammar``): which tokens may come next.

    The decode loop masks the logits with it before the sampler chain, tells it each token
    of the reply (never an end-of-sequence token: the reply ends there), and on a rollback
    resets it to the start and replays the tokens kept.
    """

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of ``logits`` with every token the grammar rejects here at ``-inf``.

        Raises:
            GrammarError: No token can continue the grammar here.
        """
        ...

    def accept(self, token: int) -> None:
        """Advance past ``token`` (one ``mask`` allowed)."""
        ...

    def rewind(self, tokens: Sequence[int]) -> None:
        """Back to the start, then advance past ``tokens``."""
        ...

    def close(self) -> None:
        """Free it."""
        ...


@dataclass
class SlotStart:
    """A slot for a new prompt, as :meth:`EngineBase._open_slot` hands it to the loop.

    Attributes:
        slot: The cache; it holds exactly the first ``reused`` tokens of the prompt.
        reused: Prompt tokens already in the cache (always < the prompt's length).
        shifted: Cached tokens that a ContextShift removed from the middle (0: none).
    """

    slot: KVSlot
    reused: int
    shifted: int = 0


@dataclass
class _Control:
    """What the consumer of a :class:`TokenStream` asks the running loop to do."""

    yielded: int = 0  # tokens of the reply as the consumer sees them (after rollbacks)
    rollback: int = 0  # tokens to drop before the next one is sampled
    bans: dict[int, set[int]] = field(default_factory=dict)  # reply index -> banned ids
    done: bool = False  # the loop has ended: nothing can be rolled back any more
    #: Per reply token (when the settings ask): (id, logprob, [(id, logprob), ...]).
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)


class TokenStream(Iterator[int]):
    """Layer 1: an iterator of sampled token ids that can also take back its last tokens.

    The last id is EOS when the model ended the reply. Between two ``next()`` calls the
    consumer may call :meth:`rollback`; the next id is then sampled again at the position
    of the first dropped one (a banned-phrase filter uses this).
    """

    def __init__(self, tokens: Generator[int, None, None], control: _Control) -> None:
        self._tokens = tokens
        self._control = control

    @property
    def logprobs(self) -> list[tuple[int, float, list[tuple[int, float]]]]:
        """Per token of the reply so far, when the settings ask for log-probabilities:
        (id, logprob, the top alternatives as (id, logprob))."""
        return self._control.logprobs

    def __next__(self) -> int:
        try:
            return next(self._tokens)
        except StopIteration:
            self._control.done = True
            raise

    def close(self) -> None:
        """End the stream early (releases the engine; the cache is kept)."""
        self._control.done = True
        self._tokens.close()

    def rollback(self, n: int, ban: Collection[int] = ()) -> None:
        """Drop the last ``n`` tokens of the reply from the sequence and the KV cache.

        Call it between two ``next()`` calls. The next token is sampled at the position of
        the first dropped one, where the ids in ``ban`` get zero probability (added to any
        banned there before, for the rest of this stream). Rolling back an EOS or the last
        allowed token continues the stream.

        Raises:
            ValueError: ``n`` < 1 or more than the tokens yielded (and not rolled back), or
                the stream has ended.
        """
        control = self._control
        if control.done:
            raise ValueError("rollback after the stream ended: call it before the next()")
        available = control.yielded - control.rollback
        if not 1 <= n <= available:
            raise ValueError(f"rollback n={n}: must be between 1 and the {available} "
                             "tokens of the reply so far")
        control.rollback += n
        if ban:
            control.bans.setdefault(control.yielded - control.rollback, set()).update(ban)


class EngineBase:
    """Layers 1-3 on top of an engine's tokenizer and KV cache (see the module docstring).

    A subclass sets ``model_name``, ``context_length``, ``eos_ids`` and implements
    :meth:`tokenize`, :meth:`detokenize`, :meth:`_reply_text`, :meth:`_open_slot`,
    :meth:`_close_slot` and :meth:`_clear_slots`; then it implements
    ``limamono.engine.protocol.Engine``.
    """

    model_name: str
    context_length: int
    eos_ids: frozenset[int]
    #: Ids put before every prompt: BOS where the tokenizer's convention adds one (Llama,
    #: Mistral), as KoboldCpp does for Llama-family models; none for SmolLM2.
    start_ids: tuple[int, ...] = ()

    #: Streams that may run at once (each in its own KV slot); the engine sets it.
    parallel: int = 1
    #: Whether ``settings.grammar`` runs here (:meth:`_open_grammar`).
    supports_grammar: bool = False
    #: The engine interrupts an evaluation whose stream is cancelled (:meth:`_watch_cancel`,
    #: raising :class:`Cancelled`): prompts are then read in ``PREFILL_CHUNK`` chunks, the
    #: fastest, instead of chunks sized to end within ``CANCEL_CHECK_S``.
    interrupts_eval: bool = False

    def __init__(self, parallel: int = 1) -> None:
        if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
            raise ValueError(f"parallel={parallel!r}: must be a whole number >= 1")
        self.parallel = parallel
        self.stats = CacheStats()
        self._slots = threading.BoundedSemaphore(parallel)  # one permit per running stream
        self._owners: set[int] = set()  # thread ids of running streams (deadlock guard)
        #: Measured seconds per prompt token (a moving average; None: not measured yet).
        self.prefill_s_per_token: float | None = None

    # -- what an engine supplies ----------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        raise NotImplementedError

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens included (the exact inverse of ``tokenize``)."""
        raise NotImplementedError

    def prompt_ids(self, text: str) -> list[int]:
        """The ids fed for a prompt: :attr:`start_ids`, then ``tokenize(text)``.

        The same ids a training sample of that text holds (``limamono.models.tokens``), on every
        route: chat, the server's chat and text-completion routes, evaluation.
        """
        return [*self.start_ids, *self.tokenize(text)]

    def _reply_text(self, ids: Sequence[int]) -> str:
        """Text of reply token ids, special tokens left out."""
        raise NotImplementedError

    def _open_slot(self, ids: list[int]) -> SlotStart:
        """A KV slot holding the longest reusable prefix of ``ids`` (fewer than all)."""
        raise NotImplementedError

    def _close_slot(self, slot: KVSlot, ids: list[int] | None) -> None:
        """Keep ``slot`` (holding exactly ``ids``) for reuse; ``ids`` None: it is spoiled."""
        raise NotImplementedError

    def _clear_slots(self) -> None:
        """Forget every cached prompt."""
        raise NotImplementedError

    def _open_grammar(self, grammar: Grammar) -> GrammarState:
        """The state of ``grammar`` for one stream (an engine that runs grammars overrides
        it and sets :attr:`supports_grammar`).

        Raises:
            GrammarError: The grammar does not parse, or this engine runs none.
        """
        raise GrammarError(grammar.field, "grammars and JSON schemas need the llama.cpp "
                           "backend (a GGUF model, --backend llamacpp); this engine runs "
                           "none; fix: leave the field empty or serve a GGUF model")

    def check_grammar(self, grammar: Grammar) -> None:
        """Parse ``grammar`` once, as a stream would (for a 400 before the queue).

        Raises:
            GrammarError: It does not parse (llama.cpp's message), or the engine runs none.
        """
        self._open_grammar(grammar).close()

    def _watch_cancel(self, slot: KVSlot, cancel: threading.Event | None) -> None:
        """Let ``slot``'s evaluations stop when ``cancel`` is set (engines with
        :attr:`interrupts_eval`; the others check it between evaluations only)."""

    def _token_pieces(self, size: int) -> list[str]:
        """The text of every token id below ``size`` (an engine may batch this)."""
        return [self.detokenize([i]) for i in range(size)]

    def vocabulary(self, size: int) -> Vocabulary:
        """The samplers' view of this tokenizer for logits of ``size`` (built once; the
        text of every token is decoded only when a sampler needs it)."""
        from limamono.samplers.vocab import Vocabulary

        cached = getattr(self, "_vocabulary", None)
        if cached is None or cached.size != size:
            cached = Vocabulary(size, self.tokenize, lambda: self._token_pieces(size),
                                self.eos_ids)
            self._vocabulary = cached
        return cached

    # -- layer 1 --------------------------------------------------------------------------

    def clear_cache(self) -> None:
        """Drop every kept KV cache (the next call evaluates its whole prompt)."""
        self._check_no_open_stream("clearing the cache")
        for _ in range(self.parallel):  # every permit: no stream is running
            self._slots.acquire()
        try:
            self._clear_slots()
        finally:
            for _ in range(self.parallel):
                self._slots.release()

    def _check_no_open_stream(self, doing: str) -> None:
        if threading.get_ident() in self._owners:
            raise RuntimeError("this thread still holds an unfinished stream of this engine; "
                               f"fix: exhaust or close() it before {doing}")

    def stream_tokens(self, prompt_ids: Sequence[int], settings: SamplerSettings,
                      max_new_tokens: int, cancel: threading.Event | None = None,
                      ) -> TokenStream:
        """Sampled token ids (layer 1); the last is EOS when the model ended the reply.

        Stops after EOS, after ``max_new_tokens`` or as soon as ``cancel`` is set (checked
        before every token and between prefill chunks, which are sized to take about
        ``CANCEL_CHECK_S``; an engine with :attr:`interrupts_eval` stops a chunk itself).
        The prompt's last token is always evaluated alone (:func:`prefill_end`), so with
        ``settings.seed`` set (or greedy) the same prompt gives the same tokens read cold,
        found cached, forked or restored (the tokens before it keep the chunk shapes they
        were read in: a prompt read in other chunks can round differently,
        docs/ARCHITECTURE.md "Greedy output and the cache").
        Errors are raised on the first ``next()``.

        Raises:
            ValueError: Empty prompt, or ``max_new_tokens`` < 0.
            RuntimeError: This thread has another stream of this engine open (waiting for
                it would deadlock).
        """
        control = _Control()
        return TokenStream(self._locked_loop(list(prompt_ids), settings, max_new_tokens,
                                             cancel, control), control)

    def _locked_loop(self, ids: list[int], settings: SamplerSettings, max_new_tokens: int,
                     cancel: threading.Event | None, control: _Control,
                     ) -> Generator[int, None, None]:
        if not ids:
            raise ValueError("prompt_ids is empty: a prompt needs at least one token")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 0")
        self._check_no_open_stream("starting another one")
        with self._slots:
            me = threading.get_ident()
            self._owners.add(me)
            try:
                yield from self._decode_loop(ids, settings, max_new_tokens, cancel, control)
            finally:
                self._owners.discard(me)

    def _decode_loop(self, ids: list[int], settings: SamplerSettings, max_new_tokens: int,
                     cancel: threading.Event | None, control: _Control,
                     ) -> Generator[int, None, None]:
        import torch

        if max_new_tokens == 0 or (cancel is not None and cancel.is_set()):
            return
        seed = settings.seed if settings.seed is not None else secrets.randbits(62)
        generator = torch.Generator().manual_seed(seed)
        # Sampling runs on CPU in fp32: same draws on every device, dtype and engine.
        context = torch.zeros(len(ids) + max_new_tokens, dtype=torch.long)
        context[:len(ids)] = torch.tensor(ids)
        grammar = None if settings.grammar is None else self._open_grammar(settings.grammar)
        try:
            yield from self._slot_loop(ids, settings, max_new_tokens, cancel, control,
                                          generator, context, grammar)
        finally:
            if grammar is not None:
                grammar.close()

    def _slot_loop(self, ids: list[int], settings: SamplerSettings, max_new_tokens: int,
                      cancel: threading.Event | None, control: _Control,
                      generator: torch.Generator, context: torch.Tensor,
                      grammar: GrammarState | None) -> Generator[int, None, None]:
        from limamono.samplers import make_sampler

        sampler = None  # made after the prefill, when the vocabulary's size is known
        start = self._open_slot(ids)
        slot, fed = start.slot, ids[:start.reused]  # fed: the tokens the cache holds, always
        consistent = True  # False while an evaluation may have half-updated the cache
        try:
            self._watch_cancel(slot, cancel)
            begin, size = start.reused, MIN_PREFILL_CHUNK
            while begin < len(ids):
                if cancel is not None and cancel.is_set():
                    return
                if self.interrupts_eval:  # a cancel stops the chunk itself
                    size = PREFILL_CHUNK
                else:
                    # Chunks follow the measured speed, so a cancel is seen within about
                    # CANCEL_CHECK_S even on a slow or loaded machine; they at most double
                    # from one to the next (a token costs more further into the prompt).
                    size = min(2 * size, prefill_chunk(self.prefill_s_per_token)) \
                        if begin > start.reused else prefill_chunk(self.prefill_s_per_token)
                chunk = ids[begin:prefill_end(begin, size, len(ids))]
                consistent = False
                took = time.perf_counter()
                logits = slot.eval(chunk)
                if len(chunk) > 1:  # a lone token's fixed cost would shrink the chunks
                    self._measure_prefill(len(chunk), time.perf_counter() - took)
                begin += len(chunk)
                fed = ids[:begin]
                consistent = True
            self._count(start, len(ids) - start.reused)
            reply = 0  # tokens of the reply in ``context`` after ``ids``
            while reply < max_new_tokens:
                if cancel is not None and cancel.is_set():
                    return
                n = len(ids) + reply
                if sampler is None:
                    vocab = self.vocabulary(logits.numel())
                    sampler = make_sampler(settings, vocab, self.context_length,
                                           self._landing(settings, vocab, len(ids),
                                                         max_new_tokens))
                masked = _banned(logits, control.bans.get(reply))
                if grammar is not None:  # a mask before the chain (docs/SILLYTAVERN.md)
                    masked = grammar.mask(masked)
                token = sampler.sample(context[:n], masked, generator)
                if grammar is not None:
                    _grammar_step(grammar, masked, token, settings, self.eos_ids)
                context[n] = token
                if settings.logprobs is not None:
                    control.logprobs.append(_logprob_entry(logits, token, settings.logprobs))
                reply += 1
                control.yielded = reply
                yield token
                if control.rollback:
                    reply -= control.rollback
                    control.yielded, control.rollback = reply, 0
                    del control.logprobs[reply:]
                    if grammar is not None:
                        grammar.rewind([int(t) for t in context[len(ids):len(ids) + reply]])
                    keep = len(ids) + reply  # the last kept token is re-run for its logits
                    consistent = False
                    slot.crop(keep - 1)
                    fed = fed[:keep - 1]
                    logits = slot.eval([int(context[keep - 1])])
                    fed.append(int(context[keep - 1]))
                    consistent = True
                    continue
                if token in self.eos_ids or reply == max_new_tokens:
                    return
                consistent = False
                logits = slot.eval([token])
                fed.append(token)
                consistent = True
        except Cancelled:  # an evaluation stopped half-way: the cache is spoiled
            return
        finally:
            self._close_slot(slot, fed if consistent else None)

    def _landing(self, settings: SamplerSettings, vocab: Vocabulary, prompt_length: int,
                 budget: int) -> Stage | None:
        """The soft-landing stage of one generation (``settings.soft_landing``), or None.

        Its budget is the generation's ``max_new_tokens``: the length label's token budget
        where the caller decided one (evaluation, drafting), else the request's cap.
        """
        if not settings.soft_landing or settings.grammar is not None:
            return None  # its forced closing characters would break a grammar
        from limamono.engine.landing import soft_landing_stage

        return soft_landing_stage(vocab, prompt_length, budget, self._reply_text)

    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Next-token logits after ``ids`` [vocab], fp32 on CPU, reusing and updating the
        KV cache as a generation would (for tests and the benchmark)."""
        ids = list(ids)
        if not ids:
            raise ValueError("prompt_ids is empty: a prompt needs at least one token")
        self._check_no_open_stream("evaluating a prompt")
        with self._slots:
            start = self._open_slot(ids)
            fed: list[int] | None = None
            try:
                begin = start.reused
                while begin < len(ids):
                    end = prefill_end(begin, PREFILL_CHUNK, len(ids))
                    logits = start.slot.eval(ids[begin:end])
                    begin = end
                self._count(start, len(ids) - start.reused)
                fed = ids
            finally:
                self._close_slot(start.slot, fed)
        return logits

    def _measure_prefill(self, tokens: int, seconds: float) -> None:
        # A slowdown counts at once, a speed-up slowly: chunks shrink fast under load.
        rate = seconds / tokens
        old = self.prefill_s_per_token
        self.prefill_s_per_token = rate if old is None or rate > old else 0.75 * old + 0.25 * rate

    def _count(self, start: SlotStart, evaluated: int) -> None:
        s = self.stats
        s.last_reused, s.last_evaluated, s.last_shifted = start.reused, evaluated, start.shifted
        s.reused_tokens += start.reused
        s.evaluated_tokens += evaluated
        s.shifted_tokens += start.shifted

    # -- layer 2 --------------------------------------------------------------------------

    def fit_prompt(self, prompt: str, max_new_tokens: int,
                   truncation: Truncation = "left") -> list[int]:
        """The prompt's token ids, cut so that they and ``max_new_tokens`` fit the context.

        The engine decides nothing about turns: a Limamono prompt is fitted by the prompt
        policy (``limamono.core.policy.fit_text``: the oldest whole turns go, never the newest
        user turn or the open header, else it refuses); any other text keeps its last
        tokens (``left``), as KoboldCpp does.

        Raises:
            ContextOverflowError: ``truncation="error"`` and the prompt does not fit,
                ``max_new_tokens`` alone fills the context, or (``PromptTooLongError``) a
                Limamono prompt's newest user turn and open header do not fit.
        """
        ids = self.prompt_ids(prompt)
        budget = self.context_length - max_new_tokens
        if budget < 1:
            raise ContextOverflowError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                f"context of {self.context_length} tokens; fix: lower max_new_tokens")
        if len(ids) <= budget:
            return ids
        if truncation == "error":
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens and max_new_tokens is {max_new_tokens}: "
                f"{len(ids) + max_new_tokens} > context length {self.context_length}; fix: "
                "shorten the prompt, lower max_new_tokens or allow truncation='left'")
        if truncation != "left":
            raise ValueError(f"truncation={truncation!r}: must be 'left' or 'error'")
        fitted = policy.fit_text(prompt, policy.token_counter(self), self.context_length,
                                 max_new_tokens)
        if fitted is not None:
            return self.prompt_ids(fitted.text)
        head = len(self.start_ids)  # BOS stays first; the text keeps its last tokens
        return ids[:head] + ids[len(ids) - max(budget - head, 0):]

    def stream_text(self, prompt: str, settings: SamplerSettings, max_new_tokens: int,
                    stop: Sequence[str] = (), cancel: threading.Event | None = None,
                    truncation: Truncation = "left") -> Iterator[TextChunk]:
        """Stream the reply to ``prompt`` as text chunks (layer 2).

        No chunk ends inside a UTF-8 character or contains any part of a stop string; the
        last chunk has ``finish_reason``: ``stop`` (a stop string or EOS), ``length``
        (``max_new_tokens`` reached) or ``cancelled``.

        Raises:
            ContextOverflowError: See :meth:`fit_prompt`.
        """
        ids = self.fit_prompt(prompt, max_new_tokens, truncation)
        decoder = IncrementalDecoder(self._reply_text)
        # Banned phrases: the filter holds back what could become one and asks layer 1 to
        # rewind when one completes (its text then never reaches the stop matcher).
        bans = PhraseFilter(settings.banned_strings, self._reply_text) \
            if settings.banned_strings else None
        matcher = StopMatcher(stop)
        count, ended_by_eos = 0, False
        sent = 0  # tokens whose log-probabilities went out with a chunk
        tokens = self.stream_tokens(ids, settings, max_new_tokens, cancel)
        try:
            for token in tokens:
                count += 1
                if token in self.eos_ids:
                    ended_by_eos = True
                    break
                if bans is None:
                    text = decoder.add(token)
                else:
                    step = bans.add(token)
                    if step.rollback:
                        tokens.rollback(step.rollback, ban={step.ban} if step.ban is not None
                                        else ())
                        count -= step.rollback
                        self.stats.rolled_back_tokens += step.rollback
                        continue
                    text = step.text
                result = matcher.feed(text)
                if result.text:
                    safe = count if bans is None else bans.released_tokens
                    yield TextChunk(result.text, prompt_tokens=len(ids), completion_tokens=count,
                                    logprobs=self._chunk_logprobs(tokens, sent, safe))
                    sent = max(sent, safe)
                if result.stop is not None:
                    break
        finally:
            tokens.close()
        rest = bans.flush() if bans is not None else decoder.flush()
        tail = "" if matcher.stopped else matcher.feed(rest).text + matcher.flush()
        reason: FinishReason = "stop"
        if matcher.stopped is None and not ended_by_eos:
            cancelled = cancel is not None and cancel.is_set() and count < max_new_tokens
            reason = "cancelled" if cancelled else "length"
        reply_tokens = count - 1 if ended_by_eos else count
        yield TextChunk(tail, finish_reason=reason, prompt_tokens=len(ids),
                        completion_tokens=count, stop_string=matcher.stopped,
                        logprobs=self._chunk_logprobs(tokens, sent, reply_tokens))

    def _chunk_logprobs(self, tokens: Iterator[int], start: int, end: int,
                        ) -> tuple[TokenLogprob, ...]:
        """Layer 1's log-probabilities of reply tokens ``start:end``, with their text (none
        when the settings did not ask for them)."""
        entries = getattr(tokens, "logprobs", ())[start:end]
        return tuple(TokenLogprob(self.detokenize([token]), token, logprob,
                                  tuple((self.detokenize([i]), i, lp) for i, lp in top))
                     for token, logprob, top in entries)

    # -- layer 3 --------------------------------------------------------------------------

    def generate(self, prompt: str, settings: SamplerSettings, max_new_tokens: int,
                 stop: Sequence[str] = (), cancel: threading.Event | None = None,
                 truncation: Truncation = "left") -> Completion:
        """The whole reply to ``prompt`` (layer 3): the joined chunks of :meth:`stream_text`."""
        parts: list[str] = []
        last = TextChunk("")
        for last in self.stream_text(prompt, settings, max_new_tokens, stop, cancel,
                                     truncation):
            parts.append(last.text)
        return Completion("".join(parts), last.finish_reason or "length", last.prompt_tokens,
                          last.completion_tokens, last.stop_string)


def _grammar_step(grammar: GrammarState, masked: torch.Tensor, token: int,
                  settings: SamplerSettings, eos_ids: frozenset[int]) -> None:
    """Advance ``grammar`` past the sampled ``token`` (an end-of-sequence token ends the
    reply and is not fed to it).

    Raises:
        GrammarError: The mask had removed ``token`` (the chain had nothing else left);
            llama.cpp would abort the process on it.
    """
    if masked[token] == float("-inf"):
        field = settings.grammar.field if settings.grammar is not None else "grammar"
        raise GrammarError(field, "no token the grammar allows here survived the samplers "
                           "(banned tokens or strings may exclude them all)")
    if token not in eos_ids:
        grammar.accept(token)


def _logprob_entry(logits: torch.Tensor, token: int, top: int,
                   ) -> tuple[int, float, list[tuple[int, float]]]:
    """The sampled token's log-probability under the model and the ``top`` most likely."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logp, min(top, logp.numel())) if top else None
    alternatives = [] if best is None else list(zip(best.indices.tolist(),
                                                    best.values.tolist(), strict=True))
    return token, float(logp[token]), alternatives


def _banned(logits: torch.Tensor, ban: set[int] | None) -> torch.Tensor:
    """``logits`` with the ids in ``ban`` at -inf (a copy; the original is untouched)."""
    if not ban:
        return logits
    out = logits.clone()
    out[list(ban)] = float("-inf")
    return out

