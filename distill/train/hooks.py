"""The training loop's collaborators (detectron2-style hooks): each owns one concern of :func:`~distill.train.fit`.

A hook sees the :class:`~distill.train.engine.Run` (model, optimizer, scheduler, state) at
``before_train``, ``after_step`` (after the epoch counter moved, when the step ended an epoch)
and ``after_train``; ``close`` runs on every exit, errors included. Hooks run in list order.

* :class:`ProgressBar`: one tqdm bar (loss, samples/s, where the schedule ends).
* :class:`TimeBudget`: fits the cosine decay into ``train.max_minutes`` and stops the run.
* :class:`MetricsLog`: appends ``metrics.csv`` rows and TensorBoard scalars every ``log_every`` steps.
* :class:`EvalHook`: evaluates every ``eval_every`` epochs, keeps ``eval.csv`` and ``best.pt``.
* :class:`Checkpointer`: atomic ``last.pt`` every ``checkpoint_every`` steps and at the end; restores it.
* :class:`EMAHook`: an exponential moving average of the student's weights, swapped in for evaluation.
* :class:`Profiler`: where a step's time goes (data, teacher, forward, backward, optimizer, hooks).

Example::

    class PrintLoss(Hook):
        def after_step(self, run):
            if run.state.step % 100 == 0:
                print(run.state.step, float(run.state.loss))

    fit(..., hooks=[PrintLoss()])
"""
from __future__ import annotations

import copy
import csv
import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn

from distill.io import atomic_write_text
from distill.progress import progress_bar

from . import ddp
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

if TYPE_CHECKING:
    from .engine import Run

#: share of a wall-time budget between re-measurements of the step time
REFIT_FRACTION = 0.02
#: a re-fit of the schedule's end is printed only when the end moves by more than this share
REFIT_REPORT = 0.05


class Hook:
    """Base class: override the phases you need."""

    def before_train(self, run: "Run") -> None:
        """Called once, after a resume restored the state."""

    def after_step(self, run: "Run") -> None:
        """Called after every optimiser step."""

    def after_train(self, run: "Run") -> None:
        """Called once when the loop ends normally."""

    def close(self, run: "Run") -> None:
        """Called on every exit, errors included: release files and bars."""


# --------------------------------------------------------------------------- progress
class ProgressBar(Hook):
    """The step bar: loss, samples/s and (with a time budget) the step the schedule ends at, which is
    also the bar's total, so its ETA is the budget's end rather than that of ``train.epochs``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.bar = enabled, None

    def before_train(self, run: "Run") -> None:
        self.bar = progress_bar(run.state.total_steps, initial=run.state.step, desc="distill", unit="step",
                                disable=not (self.enabled and run.env.is_main))

    def after_step(self, run: "Run") -> None:
        self.bar.update(1)
        if run.status_changed:
            end = run.status.get("end")
            if end is not None:  # a time budget moved where the schedule ends: the bar's total and ETA follow
                self.bar.total = max(int(end), self.bar.n)
            self.bar.set_postfix(run.status, refresh=False)
            run.status_changed = False

    def close(self, run: "Run") -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- time budget
class TimeBudget(Hook):
    """Fit the learning-rate decay into ``max_minutes`` of wall time, and stop the run there.

    The step time is measured at steps 5..35 of this process, then re-measured every 2% of the
    budget (the machine may get busier or quieter); each re-fit continues the cosine smoothly
    (:meth:`~distill.train.schedule.WarmupCosine.refit`). Rank 0 decides, so DDP ranks stay in step.
    A re-fit updates the bar; it is printed only when the end moves by more than 5%.
    """

    def __init__(self, max_minutes: float | None, log: Callable[[str], None]) -> None:
        self.budget_s = max_minutes * 60 if max_minutes else math.inf
        self.max_minutes, self.log = max_minutes, log
        self.calib: tuple[int, int] | None = None
        self.t_calib = 0.0
        self.reported: int | None = None

    def before_train(self, run: "Run") -> None:
        self.horizon = run.scheduler.lr_lambdas[0]
        start = run.state.step
        self.calib = (start + 5, start + 35) if self.budget_s < math.inf else None
        self.refit_s = max(1.0, REFIT_FRACTION * self.budget_s)
        self.reported = self.horizon.total_steps if self.horizon.fitted else None
        if self.horizon.fitted:  # a resumed run: its schedule already ends before total_steps
            run.set_status(end=self.horizon.total_steps)

    def after_step(self, run: "Run") -> None:
        s = run.state
        if self.calib is not None and s.step == self.calib[0]:
            self.t_calib = time.monotonic()
        elif self.calib is not None and s.step == self.calib[1]:
            self._refit(run, time.monotonic())
        out_of_time = s.elapsed() >= self.budget_s or (self.horizon.fitted and s.step >= self.horizon.total_steps)
        if ddp.any_rank(out_of_time, run.device) and s.step < s.total_steps:
            s.stop = "time_budget"
            if run.env.is_main:
                self.log(f"time budget of {self.max_minutes} min reached at step {s.step}/{s.total_steps}; "
                         f"checkpointed, continue with resume=True")

    def _refit(self, run: "Run", now: float) -> None:
        s, h = run.state, self.horizon
        per_step = (now - self.t_calib) / max(1, s.step - self.calib[0])
        left = self.budget_s - s.elapsed()
        fitted, next_calib = ddp.broadcast_object((min(s.total_steps, s.step + int(0.97 * left / per_step)),
                                                   s.step + max(10, int(self.refit_s / per_step))))
        first = not h.fitted
        # the end moves only when it is off by more than 2% (no churn from timing noise)
        if (fitted < s.total_steps or h.fitted) and (
                first or abs(fitted - h.total_steps) > 0.02 * max(1, h.total_steps - s.step)):
            h.refit(s.step, fitted)
            run.set_status(end=h.total_steps, s_per_step=f"{per_step:.2f}")
            if first:
                self._say(run, f"time budget: {run.settings.epochs} epochs ({s.total_steps} steps) do not fit in "
                               f"{self.max_minutes} min at {per_step:.2f} s/step; the learning-rate schedule now "
                               f"decays to zero at step {h.total_steps} (warmup {h.warmup_steps} steps)")
            elif abs(h.total_steps - self.reported) > REFIT_REPORT * max(1, self.reported):
                self._say(run, f"time budget: now {per_step:.2f} s/step; the learning-rate schedule re-fitted to "
                               f"end at step {h.total_steps}")
        self.calib = (s.step, next_calib) if h.fitted else None
        self.t_calib = now

    def _say(self, run: "Run", msg: str) -> None:
        self.reported = self.horizon.total_steps
        if run.env.is_main:
            self.log(msg)


# --------------------------------------------------------------------------- metrics
def read_csv(path: Path, max_step: int) -> list[dict[str, Any]]:
    """Rows of a metrics CSV with ``step <= max_step`` (a torn last line from a kill is dropped)."""
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                if r.get("step") and int(r["step"]) <= max_step and None not in r.values():
                    rows.append(r)
            except ValueError:
                continue
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` atomically, the header being every key in first-seen order."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class MetricsLog(Hook):
    """Every ``every`` steps (and at each epoch end): a ``metrics.csv`` row (appended) and TensorBoard scalars.

    On resume the rows past the checkpoint's step are dropped once, so replayed steps are not
    duplicated. Only logging steps read values off the device.
    """

    def __init__(self, run_dir: Path, every: int = 10) -> None:
        self.path, self.every = Path(run_dir) / "metrics.csv", every
        self.file, self.writer, self.csv, self.keys = None, None, None, None

    def before_train(self, run: "Run") -> None:
        if not run.env.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        rows = read_csv(self.path, run.state.step)
        if rows:
            write_csv(self.path, rows)
            self.keys = list(rows[0])
        elif self.path.exists():
            self.path.unlink()
        self.tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"),
                                purge_step=run.state.step if run.state.step else None)
        self.start_step, self.t_start = run.state.step, time.monotonic()

    def after_step(self, run: "Run") -> None:
        s = run.state
        if not (s.step % self.every == 0 or s.epoch_done or s.step == s.total_steps):
            return
        loss = float(ddp.all_reduce_mean(s.loss.float()))
        run.last_loss = loss
        if not run.env.is_main:
            return
        sps = (s.step - self.start_step) * run.settings.batch_size / max(time.monotonic() - self.t_start, 1e-9)
        row = {"step": s.step, "epoch": s.epoch + s.step_in_epoch / s.steps_per_epoch, "loss": loss,
               **{f"loss_{k}": float(v) for k, v in s.parts.items()}, "lr": run.scheduler.get_last_lr()[0],
               "samples_per_s": sps, "elapsed_s": s.elapsed(), "nonfinite_skipped": s.skipped}
        if s.grad_norm is not None:
            row["grad_norm"] = float(s.grad_norm)
        for k, v in row.items():
            if k != "step":
                self.tb.add_scalar(f"train/{k}", v, s.step)
        run.set_status(loss=f"{loss:.4g}", sps=f"{sps:.0f}")
        self._append(row)

    def _append(self, row: dict[str, Any]) -> None:
        if self.csv is None:
            new = self.keys is None
            self.keys = self.keys or list(row)
            self.file = open(self.path, "a", newline="")
            self.csv = csv.DictWriter(self.file, fieldnames=self.keys, extrasaction="ignore")
            if new:
                self.csv.writeheader()
        self.csv.writerow(row)
        self.file.flush()

    def close(self, run: "Run") -> None:
        if self.file is not None:
            self.file.close()
            self.file, self.csv = None, None
        if getattr(self, "tb", None) is not None:
            self.tb.close()
            self.tb = None


# --------------------------------------------------------------------------- weights
class EMAHook(Hook):
    """An exponential moving average of the student's weights (``decay`` per step), used for evaluation
    and returned as the model to deploy (``TrainResult.model``); BatchNorm statistics are averaged like
    the weights. The student itself keeps training on its raw weights.

    The average lives in the checkpoints (``extra.ema``), so a resumed run continues it.
    """

    def __init__(self, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.shadow = decay, None

    def before_train(self, run: "Run") -> None:
        self.shadow = copy.deepcopy(run.student).eval().requires_grad_(False)
        saved = run.extra_state.get("ema")
        if saved is not None:
            self.shadow.load_state_dict(saved)
        run.extra_state_providers["ema"] = lambda: self.shadow.state_dict()
        run.eval_model = self.shadow

    @torch.no_grad()
    def after_step(self, run: "Run") -> None:
        # warm start: the average forgets its random start quickly in the first steps
        d = min(self.decay, (1 + run.state.step) / (10 + run.state.step))
        for e, p in zip(self.shadow.state_dict().values(), run.student.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(p.detach(), 1 - d)
            else:
                e.copy_(p)


# --------------------------------------------------------------------------- evaluation
class EvalHook(Hook):
    """``eval_fn(student) -> {metric: value}`` on rank 0 every ``every`` epochs, at the last epoch and when a
    time budget stops the run; rows go to ``eval.csv``, TensorBoard and the checkpoint (``evals``), and the
    best value of ``best_metric`` (default: the first key) is kept as ``best.pt``."""

    def __init__(self, eval_fn: Callable[[nn.Module], dict[str, float]] | None, run_dir: Path, every: int | None,
                 epochs: int, best_metric: str | None, best_mode: str, log: Callable[[str], None]) -> None:
        self.eval_fn, self.dir, self.every, self.epochs = eval_fn, Path(run_dir), every, epochs
        self.best_metric, self.best_mode, self.log = best_metric, best_mode, log
        self.chosen: str | None = best_metric

    @property
    def best_path(self) -> Path:
        """Where the best student is kept."""
        return self.dir / "checkpoints" / "best.pt"

    def after_step(self, run: "Run") -> None:
        e = run.state.epoch  # already advanced: the number of finished epochs
        if run.state.epoch_done and (self.every and e % self.every == 0 or e == self.epochs):
            self.evaluate(run)

    def after_train(self, run: "Run") -> None:
        s = run.state
        if s.stop == "time_budget" and not (s.evals and s.evals[-1]["step"] == s.step):
            self.evaluate(run)

    def evaluate(self, run: "Run") -> None:
        """Evaluate now (rank 0; the other ranks wait)."""
        if self.eval_fn is not None and run.env.is_main:
            s, model = run.state, run.eval_model
            was = model.training
            model.eval()
            try:
                metrics = {k: float(v) for k, v in self.eval_fn(model).items()}
            finally:
                model.train(was)
            name = self.chosen = self.best_metric or next(iter(metrics), None)
            row = {"step": s.step, "epoch": s.epoch, "minutes": round(s.elapsed() / 60, 3), **metrics}
            s.evals.append(row)
            write_csv(self.dir / "eval.csv", s.evals)
            tb = getattr(next((h for h in run.hooks if isinstance(h, MetricsLog)), None), "tb", None)
            for k, v in metrics.items():
                if tb is not None:
                    tb.add_scalar(f"eval/{k}", v, s.step)
            self.log("eval " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            if name is not None:
                if name not in metrics:
                    raise KeyError(f"best_metric {name!r} is not among the eval metrics {sorted(metrics)}")
                value = metrics[name]
                if s.best_value is None or (value > s.best_value if self.best_mode == "max" else value < s.best_value):
                    s.best_value = value
                    save_checkpoint(self.best_path, {"student": model.state_dict(), "loss": run.loss.state_dict(),
                                                     "metric": name, "value": value, "step": s.step, "epoch": s.epoch,
                                                     "config": run.config})
        ddp.barrier()


# --------------------------------------------------------------------------- checkpoints
class Checkpointer(Hook):
    """``last.pt`` every ``every`` steps and at the end (atomic, every rank's RNG); :meth:`restore` resumes it."""

    def __init__(self, every: int, log: Callable[[str], None]) -> None:
        self.every, self.log = every, log

    def restore(self, run: "Run") -> None:
        """Load ``last.pt`` into the run (weights, optimiser, schedule, position, RNG), if it exists."""
        self.path = run.last_path
        if not self.path.exists():
            if run.env.is_main:
                self.log(f"resume requested but {self.path} does not exist; starting from scratch")
            return
        state = load_checkpoint(self.path)
        if state.get("train_faces", run.train_faces) != run.train_faces:
            from distill.config import ConfigError

            raise ConfigError(f"--resume: {self.path} was trained on another set of training faces than this run "
                              f"has now (images were added, removed or excluded differently since, e.g. by the "
                              f"leak guard). A checkpoint cannot continue on other data: start a new run (another "
                              f"--out, or --overwrite), or restore the training folders as they were")
        run.student.load_state_dict(state["student"])
        run.loss.load_state_dict(state["loss"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        s = run.state
        s.step, s.epoch, s.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        s.skipped, s.elapsed_before, s.best_value = state["nonfinite_skipped"], state["elapsed_s"], state["best_value"]
        s.evals = list(state.get("evals", []))
        run.extra_state.update(state.get("extra") or {})
        set_rng_state(state["rng"][min(run.env.rank, len(state["rng"]) - 1)])
        if run.env.is_main:
            self.log(f"resuming {self.path} at step {s.step}/{s.total_steps} (epoch {s.epoch}, batch {s.step_in_epoch})")

    def before_train(self, run: "Run") -> None:
        self.path = run.last_path

    def after_step(self, run: "Run") -> None:
        if run.state.step % self.every == 0:
            self.save(run)

    def after_train(self, run: "Run") -> None:
        self.save(run)

    def save(self, run: "Run") -> None:
        """Write ``last.pt`` (every rank takes part: their RNG states are gathered)."""
        states = [rng_state()]
        if run.env.distributed:  # every rank's RNG, so each resumes its own stream
            gathered: list[Any] = [None] * run.env.world_size
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        if run.env.is_main:
            s = run.state
            save_checkpoint(self.path, {
                "student": run.student.state_dict(), "loss": run.loss.state_dict(),
                "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(), "step": s.step,
                "epoch": s.epoch, "step_in_epoch": s.step_in_epoch, "total_steps": s.total_steps,
                "nonfinite_skipped": s.skipped, "elapsed_s": s.elapsed(), "best_value": s.best_value,
                "evals": s.evals, "rng": states, "config": run.config, "world_size": run.env.world_size,
                "train_faces": run.train_faces,
                "extra": {k: f() for k, f in run.extra_state_providers.items()}})


# --------------------------------------------------------------------------- profiling
class Profiler(Hook):
    """Wall time per phase of the training step after ``warmup`` steps (allocator and kernel caches warm).

    After training, ``seconds`` holds ``{phase: seconds}`` over ``steps`` measured steps; ``per_step()``
    gives milliseconds per step. Phases: ``data`` (next batch: decode + augment, or waiting for
    workers), ``teacher`` (targets), ``forward`` (preprocess, student, loss), ``backward``,
    ``optimizer`` (clipping + step), ``hooks`` (logging, evaluation, checkpoints).
    """

    def __init__(self, warmup: int = 5) -> None:
        self.warmup, self.steps, self.seconds = warmup, 0, {}

    def before_train(self, run: "Run") -> None:
        self.start = run.state.step
        run.profile()

    def after_step(self, run: "Run") -> None:
        if run.state.step - self.start == self.warmup:
            run.phases.clear()
            self.t0 = time.perf_counter()
        if run.state.step - self.start > self.warmup:
            self.steps = run.state.step - self.start - self.warmup

    def after_train(self, run: "Run") -> None:
        self.seconds = dict(run.phases or {})
        self.wall = time.perf_counter() - getattr(self, "t0", time.perf_counter())

    def per_step(self) -> dict[str, float]:
        """Milliseconds per step of each phase (and ``total``, the wall time per step)."""
        n = max(1, self.steps)
        out = {k: 1e3 * v / n for k, v in self.seconds.items()}
        out["total"] = 1e3 * self.wall / n
        return out
