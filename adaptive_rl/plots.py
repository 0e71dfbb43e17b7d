"""Plots of a run's metrics.jsonl: reward and held-out accuracy vs rollouts, effective ratio vs
step, samples-per-prompt histogram; and a comparison of several runs."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np


class _Figures:
  """pyplot-like `subplots` / `close` on bare Figures: no global backend switch, so plotting
  from a notebook leaves its inline backend alone."""

  @staticmethod
  def subplots(*args, **kwargs):
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(*args, **kwargs)

  @staticmethod
  def close(fig):
    del fig


def _plt():
  return _Figures


def _series(records, key, x="rollouts"):
  pts = [(r[x], r[key]) for r in records if key in r and x in r
         and isinstance(r[key], (int, float))]
  return (np.array([p[0] for p in pts]), np.array([p[1] for p in pts])) if pts else (None, None)


def plot_run(records: Sequence[dict[str, Any]], out_dir: str,
             sample_hist: np.ndarray | None = None) -> list[str]:
  """Writes the standard plots of one run into out_dir; returns the file paths.

  Args:
    records: metrics.jsonl records.
    out_dir: where the PNGs go.
    sample_hist: `sample_hist[k]` = number of prompts that got k samples over the run (a
      histogram, so its size does not grow with the number of steps).
  """
  plt = _plt()
  os.makedirs(out_dir, exist_ok=True)
  paths = []

  fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
  x, y = _series(records, "reward_mean")
  if x is not None:
    ax[0].plot(x, y, lw=1)
  ax[0].set(xlabel="rollouts", ylabel="train reward (mean)", title="Reward vs rollouts")
  x, y = _series(records, "eval_accuracy")
  if x is not None:
    ax[1].plot(x, y, marker="o")
  ax[1].set(xlabel="rollouts", ylabel="held-out accuracy (greedy)",
            title="Held-out accuracy vs rollouts")
  for a in ax:
    a.grid(alpha=0.3)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "reward_accuracy.png"))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for key in ("effective_ratio", "prompt_effective_ratio", "rollout_efficiency"):
    x, y = _series(records, key, x="step")
    if x is not None:
      ax.plot(x, y, label=key, lw=1)
  ax.set(xlabel="step", ylabel="ratio", title="Efficiency ratios vs step", ylim=(0, 1.05))
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "effective_ratio.png"))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)

  if sample_hist is not None and np.any(sample_hist):
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    hist = np.asarray(sample_hist).ravel()
    used = np.flatnonzero(hist)
    ks = np.arange(used[0], used[-1] + 1)
    ax.bar(ks, hist[ks], width=1.0)
    ax.set(xlabel="samples per prompt", ylabel="prompts", title="Samples per prompt (run)")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "samples_per_prompt.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
  return paths


def plot_comparison(runs: dict[str, Sequence[dict[str, Any]]], out_path: str,
                    key: str = "effective_ratio", x: str = "rollouts") -> str:
  """One curve of `key` vs `x` per named run (e.g. per allocator)."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, records in runs.items():
    xs, ys = _series(records, key, x=x)
    if xs is not None:
      ax.plot(xs, ys, label=name, lw=1)
  ax.set(xlabel=x, ylabel=key, title=f"{key} vs {x}")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path
