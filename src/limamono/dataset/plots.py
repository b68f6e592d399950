"""The plots of ``limamono data stats --plots``: length labels and tokens per conversation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from limamono.core.conversation import LENGTHS

#: Files written by ``plot_stats``, by figure.
LABELS_PNG = "length_labels.png"
TOKENS_PNG = "conversation_tokens.png"


def plot_stats(stats: dict[str, Any], out: str | Path) -> list[Path]:
    """Draw the length-label distribution (per role) and the tokens of each conversation.

    Args:
        stats: figures from ``compute_stats`` (or a build's ``stats.json``); a build made
            before tokens per conversation were recorded gets the label plot only.
        out: folder for the PNG files (created).

    Returns:
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    labels = stats["length_labels"]
    order = [x for x in (*LENGTHS, "none") if any(x in labels[r] for r in labels)]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(labels), 1)
    for n, (role, counts) in enumerate(labels.items()):
        ax.bar([i + n * width for i in range(len(order))], [counts.get(x, 0) for x in order],
               width, label=role)
    ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(order))])
    ax.set_xticklabels(order)
    ax.set_ylabel("messages")
    ax.set_title("Length labels per role")
    ax.legend()
    fig.tight_layout()
    written.append(folder / LABELS_PNG)
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    tokens = stats.get("conversation_tokens")
    if tokens:
        names = sorted(tokens, key=lambda k: tokens[k])
        fig, ax = plt.subplots(figsize=(7, max(3.0, 0.2 * len(names) + 1)))
        ax.barh([Path(n).stem for n in names], [tokens[n] for n in names])
        ax.set_xlabel("tokens (whole conversation, rendered)")
        ax.set_title("Tokens per conversation")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        written.append(folder / TOKENS_PNG)
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written
