"""PNG plots of a run: training and validation loss, validation accuracy, and a confusion matrix.

matplotlib is an optional extra (``pip install 'ltuning[plots]'``); without it the CLI's ``--plot``
stops with one clear error before any training starts.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def require_matplotlib():
    """The pyplot module on the file-only Agg backend; ConfigError when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'ltuning[plots]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(results: dict, out_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` (training loss per step, validation loss per evaluation) and, when the run was
    validated, ``accuracy.png`` (validation accuracy, MCC and macro-F1 per evaluation) from a
    ``train_results.json`` dict. Returns the files written."""
    plt = require_matplotlib()
    out_dir = Path(out_dir)
    method = (results.get("args") or {}).get("method", "")
    log, history = results.get("train_log") or [], results.get("history") or []
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    if log:
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], lw=0.8, alpha=0.6, label="train (per step)")
    if history:
        ax.plot([r["step"] for r in history], [r["loss"] for r in history], "o-", label="validation")
    ax.set(xlabel="step", ylabel="loss", title=f"{method} loss".strip())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=120)
    plt.close(fig)
    written.append(out_dir / "loss.png")
    if history:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in ("accuracy", "mcc", "macro_f1"):
            ax.plot([r["step"] for r in history], [r[key] for r in history], "o-", label=key)
        best = results.get("best_step")
        if best:
            ax.axvline(best, color="grey", ls="--", lw=0.8, label=f"best step {best}")
        ax.set(xlabel="step", ylabel="validation metric", title=f"{method} validation".strip())
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "accuracy.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "accuracy.png")
    return written


def plot_confusion(cm: list[list[int]], label_names: list[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix (rows: true, columns: predicted) with counts in the cells."""
    plt = require_matplotlib()
    K = len(label_names)
    fig, ax = plt.subplots(figsize=(1.2 * K + 2.5, 1.2 * K + 2))
    im = ax.imshow(cm, cmap="Blues")
    top = max((max(r) for r in cm), default=0)
    for i in range(K):
        for j in range(K):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center",
                    color="white" if cm[i][j] > top / 2 else "black")
    ax.set_xticks(range(K), label_names, rotation=30, ha="right")
    ax.set_yticks(range(K), label_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
