"""The training loop: SFT warm start, then RL steps; metrics, evaluation, checkpoints, outputs.

  summary = train(build_run(parse_config(config)), workdir)

Each RL step is one call of the session's `RLStep` (one jitted program with in-graph rewards);
the host fetches metrics one step behind, evaluates, checkpoints and writes outputs. Re-running
on the same workdir resumes from the latest readable checkpoint (damaged newer ones are set
aside and their steps trained again). SIGTERM / SIGINT checkpoint the last whole step and raise
`Preempted`; too many consecutive non-finite updates checkpoint and raise `NumericalFailure`.

Multi-host (`jax.distributed` initialised first): every process runs the same loop; only
process 0 writes config.json, metrics, plots and summary.json, while Orbax checkpoints are
written by all processes together (the workdir must be on a filesystem they share).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np

from adaptive_rl import models
from adaptive_rl.checkpoint import Checkpointer
from adaptive_rl.metrics import MetricsWriter, read_metrics, write_json
from adaptive_rl.rl.preemption import Preempted, StopFlag
from adaptive_rl.rl.run import Run
from adaptive_rl.rl.session import Session
from adaptive_rl.rl.workdir import open_workdir

_MIB = 1024 ** 2
# (step, record) -> None, called after each step's record is written (process 0 and others).
Callback = Callable[[int, dict[str, Any]], None]


class NumericalFailure(RuntimeError):
  """Too many consecutive non-finite updates."""


def _log(message: str):
  if jax.process_index() == 0:
    print(message, flush=True)


def describe_memory(run: Run) -> str:
  m, mesh = run.memory, dict(run.mesh.shape)
  return (f"Mesh {mesh} over {run.mesh.size} device(s), {jax.process_count()} process(es); "
          f"estimated memory per device: peak {m['peak'] / _MIB:.1f} MiB (train "
          f"{m['train_total'] / _MIB:.1f}, sample {m['sample_total'] / _MIB:.1f}; params "
          f"{m['params'] / _MIB:.1f}, optimizer {m['optimizer'] / _MIB:.1f}, activations "
          f"{m['activations'] / _MIB:.1f}, kv cache {m['kv_cache'] / _MIB:.1f})")


def _record(metrics, counts, step_time: float, extra: dict[str, Any]) -> dict[str, Any]:
  """A metrics.jsonl record from a step's (device) metrics."""
  metrics = jax.device_get(metrics)
  rec = {k: (float(v) if np.ndim(v) == 0 else v) for k, v in metrics.items()
         if not k.startswith("total/")}
  rec.update(rollouts=int(metrics["total/rollouts"]),
             tokens_generated=int(metrics["total/tokens_generated"]),
             nan_skips=int(metrics["total/nan_skips"]),
             reward_errors=int(metrics["total/reward_errors"]), step_time_s=step_time,
             samples_per_second=float(metrics["rollouts_step"]) / max(step_time, 1e-9))
  rec.update(extra)
  return rec


class _Outputs:
  """metrics.jsonl / TensorBoard, the progress bar and the samples-per-prompt histogram."""

  def __init__(self, run: Run, workdir: str, start_step: int, callbacks: Iterable[Callback]):
    log = run.config.log
    self.writer = MetricsWriter(workdir, resume_step=start_step, tensorboard=log.tensorboard,
                                enabled=jax.process_index() == 0)
    self.callbacks = tuple(callbacks)
    self.samples_hist = np.zeros(0, np.int64)  # [k] = prompts given k samples
    self.progress = None
    if log.progress and jax.process_index() == 0:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
      # One bar, from the resumed step (`initial`), counting only this process's steps.
      self.progress = tqdm(total=run.config.rl.steps, initial=start_step, desc="RL",
                           dynamic_ncols=True)

  def emit(self, step: int, metrics, counts, step_time: float, extra: dict[str, Any]):
    rec = _record(metrics, counts, step_time, extra)
    self.writer.write(step, rec)
    if self.progress is not None:
      post = {"reward": f"{rec['reward_mean']:.3f}", "eff": f"{rec['effective_ratio']:.2f}"}
      if "eval_accuracy" in rec:
        post["held_out"] = f"{rec['eval_accuracy']:.3f}"
      self.progress.set_postfix(post)
      self.progress.update(1)
    # A histogram, not the raw counts: appending every step's counts grew without bound.
    hist = np.bincount(np.asarray(jax.device_get(counts)).ravel().astype(np.int64),
                       minlength=self.samples_hist.size)
    self.samples_hist = np.pad(self.samples_hist, (0, hist.size - self.samples_hist.size)) + hist
    for callback in self.callbacks:
      callback(step, rec)

  def close(self):
    if self.progress is not None:
      self.progress.close()
      self.progress = None
    self.writer.close()


def _meta(step, sft_acc, sft_time, wall) -> dict[str, Any]:
  return {"step": int(step), "sft_accuracy": float(sft_acc), "sft_time_s": float(sft_time),
          "wall_time_s": float(wall)}


def _start(session: Session, ckpt: Checkpointer, workdir: str):
  """(state, sft accuracy, sft seconds, wall seconds so far): resumed or freshly warm-started."""
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(None, session.layout.abstract_state)
    if ckpt.skipped_steps:
      moved = ckpt.set_aside(ckpt.skipped_steps)
      _log(f"Checkpoint step(s) {ckpt.skipped_steps} could not be restored (see the warnings "
           f"above); moved to {moved or 'checkpoints_unreadable'}")
    session.policy.restore(state)
    _log(f"Resuming from checkpoint step {ckpt.restored_step} in {workdir}")
    return state, float(meta["sft_accuracy"]), float(meta["sft_time_s"]), float(
        meta["wall_time_s"])
  t0 = time.time()
  state = session.start()
  sft_time = time.time() - t0
  # (LoRA: the base with the fresh B = 0 adapters, so the eval compiles once for the run.)
  sft_acc = session.evaluate(state.params)["accuracy"]
  _log(f"SFT warm start: held-out accuracy {sft_acc:.3f} ({sft_time:.1f} s)")
  ckpt.save(0, state, _meta(0, sft_acc, sft_time, time.time() - t0))
  return state, sft_acc, sft_time, 0.0


def change_interval(before: float, after: float, n: int) -> float:
  """Half-width of a 95% interval of the change in a held-out accuracy over n prompts (each
  accuracy's binomial standard error, combined as if independent: conservative)."""
  var = sum(p * (1 - p) for p in (before, after)) / max(n, 1)
  return 1.96 * math.sqrt(var)


def train(run: Run, workdir: str, *, callbacks: Iterable[Callback] = (),
          session: Session | None = None, stop: StopFlag | None = None) -> dict[str, Any]:
  """Trains (or resumes) `run` in `workdir` to `rl.steps` steps; returns the summary.

  Args:
    run: the built run.
    workdir: outputs and checkpoints (see README).
    callbacks: called with (step, record) after each step's record is written.
    session: the runtime to use (default: a new `Session(run)`); closed at the end.
    stop: the stop flag the signal handlers set (default: a new one); setting its `signal`
      from a callback stops the run after that step exactly as a SIGTERM would.
  """
  cfg = run.config
  workdir = os.path.abspath(workdir)
  open_workdir(workdir, cfg.raw)
  session = session or Session(run)
  ckpt = Checkpointer(workdir, keep=cfg.checkpoint.keep,
                      keep_every=cfg.checkpoint.keep_every or None)
  if cfg.log.note:
    _log(cfg.log.note)
  _log(describe_memory(run))
  t0 = time.time()
  state, sft_acc, sft_time, elapsed0 = _start(session, ckpt, workdir)
  save = lambda s: ckpt.save(int(s.step), s, _meta(int(s.step), sft_acc, sft_time,
                                                    elapsed0 + time.time() - t0))
  out = _Outputs(run, workdir, int(state.step), callbacks)
  pending = None  # the previous step's (step, metrics, counts, time, extra): fetched one behind
  try:
    with stop or StopFlag() as stop:
      step_t = time.time()
      for step in range(int(state.step), cfg.rl.steps):
        state, metrics, counts = session.step(state)
        if pending is not None:
          out.emit(*pending)
        now, done = time.time(), step + 1
        pending = (done, metrics, counts, now - step_t, {})
        step_t = now
        if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.rl.steps:
          pending[4].update({f"eval_{k}": v for k, v in
                             session.evaluate(state.params, done).items()})
        skips = int(state.counters["consecutive_nan_skips"])
        if skips >= cfg.rl.max_consecutive_nan:
          out.emit(*pending)
          pending = None
          save(state)
          raise NumericalFailure(
              f"{skips} consecutive updates had a non-finite loss or gradient (step {done}); "
              f"stopping with the last good state checkpointed")
        if stop.requested(ckpt, done):
          break
        if cfg.checkpoint.every and done % cfg.checkpoint.every == 0:
          save(state)
      if pending is not None:
        out.emit(*pending)
      if stop.signal is not None:
        save(state)
        raise Preempted(f"received {stop.describe()}: checkpointed step {int(state.step)} in "
                        f"{workdir}; run the same command again to resume")
    final = session.evaluate(state.params, int(state.step))
    save(state)
    if run.lora_cfg is not None:  # the checkpoint holds only adapters: write the whole model
      session.policy.export_hf(state.params, os.path.join(workdir, "merged_hf"))
  finally:
    out.close()
    ckpt.close()
    session.close()
  return _summarise(run, workdir, state, sft_acc, sft_time, elapsed0 + time.time() - t0, final,
                    out.samples_hist)


def _summarise(run: Run, workdir: str, state, sft_acc, sft_time, wall, final, samples_hist):
  """summary.json and the plots (process 0); the summary dict on every process."""
  main = jax.process_index() == 0
  # Only process 0 writes metrics.jsonl; the others' summaries lack the figures read from it.
  records = read_metrics(workdir) if main else []
  step = int(state.step)
  summary = {
      "sft_accuracy": sft_acc, "final_accuracy": final["accuracy"], "final_eval": final,
      "steps": step, "rollouts": int(state.counters["rollouts"]),
      "tokens_generated": int(state.counters["tokens_generated"]),
      "nan_skips": int(state.counters["nan_skips"]), "wall_time_s": wall, "sft_time_s": sft_time,
      "model_params": run.model_cfg.num_params(),
      "trainable_params": models.lora.count_params(state.params),
      "last_loss": records[-1].get("loss") if records else None, "config": run.config.raw,
  }
  if main:
    write_json(os.path.join(workdir, "summary.json"), summary)
    if run.config.log.plots:
      from adaptive_rl.plots import plot_run  # pylint: disable=import-outside-toplevel
      records.append({"step": step, "rollouts": summary["rollouts"],
                      "eval_accuracy": final["accuracy"]})
      records.insert(0, {"step": 0, "rollouts": 0, "eval_accuracy": sft_acc})
      plot_run(records, os.path.join(workdir, "plots"), samples_hist)
  n = int(final.get("num_prompts", run.test_data.size))
  half = change_interval(sft_acc, final["accuracy"], n)
  change = final["accuracy"] - sft_acc
  verdict = "within noise" if abs(change) <= half else ("a gain" if change > 0 else "a loss")
  _log(f"Held-out accuracy: SFT {sft_acc:.3f} -> RL {final['accuracy']:.3f} "
       f"({change:+.3f} ± {half:.3f}, 95% over {n} prompts: {verdict}) after "
       f"{summary['rollouts']} rollouts, {wall:.0f} s")
  return summary
