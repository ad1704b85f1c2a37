"""Pictures: attention heatmaps and training curves, as PNG files (matplotlib, Agg backend:
no display needed). matplotlib is imported on first use only."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MAX_PLOT_WORDS = 60  # longer sentences are plotted cut to this many words, with a warning


def _pyplot():
    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # not its font-cache notes
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def attention_heatmap(
    path: str | Path, src_words: Sequence[str], tgt_words: Sequence[str], heads: torch.Tensor, *, title: str = ""
) -> Path:
    """Draw :func:`heatmap_figure` into the PNG file `path`."""
    path = Path(path)
    if max(len(src_words), len(tgt_words)) > MAX_PLOT_WORDS:
        log.warning(
            "%s: %d source and %d target words, more than the plotting limit of %d: the picture is cut",
            path.name,
            len(src_words),
            len(tgt_words),
            MAX_PLOT_WORDS,
        )
    fig = heatmap_figure(src_words, tgt_words, heads, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path


def heatmap_figure(src_words: Sequence[str], tgt_words: Sequence[str], heads: torch.Tensor, *, title: str = ""):
    """heads (H, target words, source words): one panel per head, then their mean when H > 1.

    Source words label the x axis, target words the y axis; at most MAX_PLOT_WORDS of each."""
    src_words, tgt_words = list(src_words)[:MAX_PLOT_WORDS], list(tgt_words)[:MAX_PLOT_WORDS]
    heads = heads[:, : len(tgt_words), : len(src_words)].float()
    panels = [(f"head {h + 1}", heads[h]) for h in range(heads.size(0))] if heads.size(0) > 1 else []
    panels.append(("mean of the heads" if panels else "attention", heads.mean(0)))
    plt = _pyplot()
    width = max(3.0, 0.32 * len(src_words) + 1.5)
    height = max(2.5, 0.3 * len(tgt_words) + 1.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], panels):
        ax.imshow(matrix.numpy(), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(src_words)), labels=src_words, rotation=90, fontsize=8)
        ax.set_yticks(range(len(tgt_words)), labels=tgt_words, fontsize=8)
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def training_curves(path: str | Path, records: Sequence[dict]) -> Path:
    """Loss and BLEU against updates and against minutes, from the run's metrics records.

    A step that appears twice (a resumed run repeats the steps after its last save) is
    drawn from its latest record."""
    latest: dict[tuple[str, int], dict] = {}
    for r in records:
        latest[(r.get("kind", "train"), int(r["step"]))] = r
    train = sorted((r for (kind, _), r in latest.items() if kind == "train"), key=lambda r: r["step"])
    valid = sorted((r for (kind, _), r in latest.items() if kind == "valid"), key=lambda r: r["step"])
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), squeeze=False)
    for col, (x, label) in enumerate((("step", "updates"), ("minutes", "minutes"))):
        loss_ax, bleu_ax = axes[0][col], axes[1][col]
        if train:
            loss_ax.plot([r[x] for r in train], [r["loss"] for r in train], label="training loss (per token)")
        if valid:
            loss_ax.plot([r[x] for r in valid], [r["valid_loss"] for r in valid], "o-", label="validation loss")
            bleu_ax.plot([r[x] for r in valid], [r["valid_bleu"] for r in valid], "o-", label="validation BLEU")
            bleu_ax.plot([r[x] for r in valid], [r["valid_chrf"] for r in valid], "s--", label="validation chrF")
        for ax in (loss_ax, bleu_ax):
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=8)
        loss_ax.set_ylabel("loss")
        bleu_ax.set_ylabel("score")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=70)
    plt.close(fig)
    tmp.replace(path)  # a reader never sees half a picture
    return path


def entropy(rows: Sequence[torch.Tensor]) -> float:
    """Mean entropy (nats) of attention rows: each tensor (rows, S) over one sentence's source."""
    total, count = 0.0, 0
    for a in rows:
        a = a.float().clamp(min=1e-12)
        h = -(a * a.log()).sum(-1)
        total, count = total + float(h.sum()), count + h.numel()
    return total / count if count else math.nan
