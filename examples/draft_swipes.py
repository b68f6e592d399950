"""Draft the rejected swipes of the preference example (examples/prefs/).

For the first character turn(s) (after a user turn) of each bundled training conversation
(examples/conversations/, not the four held out with ``meta.split: eval``), the demo adapter
writes a second reply to the same prompt, with the hand-written reply's length label and the
adapter's sampler preset. The conversation up to the last drafted turn is written to
examples/prefs/NAME.yaml with both replies as swipes of that turn: swipe 0, the hand-written
reply, is the one kept (chosen), the draft is the other (rejected). `limamono data prefs
examples/prefs` then makes the pairs.

    PYTHONPATH=src python examples/draft_swipes.py [--turns 1] [--seed 7]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from limamono.core.conversation import Message, Swipe, dump_yaml
from limamono.core.policy import get_policy, reply_token_budget
from limamono.dataset import load_dir
from limamono.dataset.draft import clean_turn
from limamono.engine import load_engine
from limamono.samplers import get_preset
from limamono.style import normalize

HERE = Path(__file__).resolve().parent
#: Reply cap of the drafts: the evaluation's (docs/EVAL.md), within which each draft gets
#: its label's budget. The committed example uses it; a first version capped the drafts at
#: 64 tokens, and DPO then learned "longer" (docs/TRAINING.md, "The example").
MAX_TOKENS = 384


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=1, help="drafted turns per conversation")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backend", default="torch", help="torch (default) or llamacpp")
    parser.add_argument("--limit", type=int, default=None, help="at most this many "
                        "conversations (alphabetical)")
    parser.add_argument("--out", type=Path, default=HERE / "prefs")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    args = parser.parse_args()
    records, _ = load_dir(HERE / "conversations")
    engine = load_engine(adapter="demo", dtype="fp32", threads=args.threads,
                         backend=args.backend)
    policy = get_policy("training")
    settings = get_preset("limamono")
    args.out.mkdir(exist_ok=True)
    train = [r for r in sorted(records, key=lambda r: r.name)
             if r.conversation.meta.get("split") != "eval"]
    for record in train[:args.limit]:
        conv = record.conversation
        labelled = policy.label(conv).messages
        turns = [i for i, m in enumerate(labelled) if m.role == "char" and i > 0
                 and labelled[i - 1].role == "user"][:args.turns]
        messages = list(conv.messages[:turns[-1] + 1])
        for i in turns:
            label = str(labelled[i].length)
            prompt = policy.render(replace(conv, messages=conv.messages[:i]),
                                   response_length=label)
            done = engine.generate(prompt, settings.replace(seed=args.seed + i),
                                   reply_token_budget(label, args.max_tokens),
                                   stop=policy.stop_strings(conv.user.name))
            draft = normalize(clean_turn(done.text))[0]
            messages[i] = Message("char", None, label, swipes=[
                Swipe(conv.messages[i].text), Swipe(draft, finish_reason=done.finish_reason)])
            print(f"{Path(record.name).stem} turn {i} ({label}): {len(draft.split())} words, "
                  f"{done.finish_reason}", flush=True)
        meta = {"source": f"conversations/{Path(record.name).name}",
                "swipes": "swipe 1 of each drafted turn: the demo adapter (seed "
                          f"{args.seed} + turn), {args.max_tokens}-token cap, "
                          f"{args.backend} backend"}
        chat = replace(conv, messages=messages, meta=meta)
        (args.out / Path(record.name).name).write_text(dump_yaml(chat), encoding="utf-8")


if __name__ == "__main__":
    main()
