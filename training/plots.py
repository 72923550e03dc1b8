"""PNG plots: the training curve and confusion matrices saved next to a run; DET curves of streaming evaluation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

_LOGGER = logging.getLogger(__name__)

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Sequence[dict], path: Path) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in history], label="training")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    ax2.plot(epochs, [h["accuracy"] for h in history], label="training")
    ax2.plot(epochs, [h["val_accuracy"] for h in history], label="validation")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_det(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], thresholds: Sequence[float | None],
             negative_hours: float, title: str, path: Path,
             marks: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
             target_fa_per_hour: float | None = None) -> None:
    """DET curve: false-reject rate against false accepts per hour (log), one line per condition.

    ``curves[condition] = (fa_per_hour, frr)`` over a sweep of ``thresholds``; ``marks[name]``
    = one point per condition (same order as ``curves``). No false accept at all cannot sit
    on a log axis: it is drawn at the left edge, half of one false accept in ``negative_hours``.
    """
    plt = _pyplot()
    floor = 0.5 / negative_hours
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (condition, (fa, frr)), colour in zip(curves.items(), colours):
        x = np.maximum(np.asarray(fa, float), floor)
        ax.plot(x, frr, "-", color=colour, label=condition, linewidth=1.5)
    if curves:
        fa, frr = next(iter(curves.values()))
        for fa_h, rate, threshold in zip(fa, frr, thresholds):
            if threshold is not None and round(threshold, 6) in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99):
                ax.annotate(f"{threshold:g}", (max(fa_h, floor), rate), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color="dimgray")
    for (name, (fa, frr)), marker in zip((marks or {}).items(), "o*sD^v"):
        ax.scatter(np.maximum(np.asarray(fa, float), floor), frr, marker=marker, s=60, facecolors="none",
                   edgecolors=colours[: len(frr)], linewidths=1.5, zorder=3)
        ax.scatter([], [], marker=marker, s=60, facecolors="none", edgecolors="black", label=name)
    if target_fa_per_hour and target_fa_per_hour >= floor:  # below the floor it cannot be told from none
        ax.axvline(target_fa_per_hour, color="gray", linestyle=":", label=f"{target_fa_per_hour:g} FA/h")
    ax.set_xscale("log")
    ax.set_xlim(left=floor / 1.3)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"false accepts per hour ({negative_hours:.2f} h of negatives; none drawn at {floor:.2g})")
    ax.set_ylabel("false-reject rate")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
