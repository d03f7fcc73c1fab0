"""The distillation loop: one explicit function, :func:`fit`, plus small helpers.

Per step: a uint8 batch of augmented views (DataLoader workers augment) ->
teacher targets (online: the teacher embeds the same uint8 batch; cached: a
memmap lookup) -> the student's Preprocessing in the main process -> student
forward (fp32 or bf16 autocast, NCHW or channels_last) -> loss -> AdamW/SGD
step with warmup + cosine and gradient clipping. Checkpoints (atomic) every
``checkpoint_every`` steps, on a time-budget stop and at the end; ``resume=True``
continues at the exact step, mid-epoch included. Metrics go to
``run_dir/metrics.csv``, ``run_dir/eval.csv`` and TensorBoard events in
``run_dir/tensorboard``.

Example::

    from distill.losses import build_loss
    from distill.train import fit, OnlineTeacher

    crit = build_loss(cfg.train.loss, student_dim=128, teacher_dim=128, teacher_normalized=False)
    result = fit(student, student_pre, OnlineTeacher(teacher, precision="bf16"), views, crit, cfg.train,
                 run_dir, eval_fn=lambda s: {"acc": evaluate(s)}, resume=True, seed=cfg.seed,
                 workers=cfg.data.workers, config=cfg.model_dump(mode="json"))
    result.samples_per_s, result.last_checkpoint
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from distill.config import TrainSettings
from distill.data.views import EpochViewSampler, FaceViews
from distill.io import atomic_write_text
from distill.preprocess import Preprocessing

from . import ddp
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .schedule import build_optimizer, build_scheduler

REFIT_FRACTION = 0.02  # share of a wall-time budget between re-measurements of the step time


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf with ``nonfinite='stop'``; the last good checkpoint is kept."""


class TeacherSource(Protocol):
    """Where targets come from: ``targets(uint8 faces, face indices, view ids) -> (B, D)``.

    ``num_views`` is None for an online teacher (fresh view every epoch) or K for a cache.
    """

    num_views: int | None

    def targets(self, faces: torch.Tensor, indices: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor: ...


class OnlineTeacher:
    """The teacher embeds each augmented batch as drawn (optionally under bf16 autocast)."""

    num_views = None

    def __init__(self, teacher: Any, precision: str = "fp32") -> None:
        self.teacher, self.precision = teacher, precision

    def to(self, device: torch.device) -> "OnlineTeacher":
        if isinstance(self.teacher, nn.Module):
            self.teacher.to(device)
        return self

    @torch.no_grad()
    def targets(self, faces: torch.Tensor, indices: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor:
        params = next(self.teacher.parameters(), None) if isinstance(self.teacher, nn.Module) else None
        device = params.device if params is not None else faces.device
        ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if self.precision == "bf16"
               else contextlib.nullcontext())
        with ctx:
            return self.teacher.embed(faces.to(device)).float()


@dataclass
class TrainResult:
    steps: int
    epochs_completed: int
    final_loss: float
    samples_per_s: float
    seconds: float
    stopped: str  # "finished" | "time_budget"
    last_checkpoint: Path
    best_checkpoint: Path | None = None
    best_metric: str | None = None
    best_value: float | None = None
    nonfinite_skipped: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)


class _Distiller(nn.Module):
    """student + loss in one module, so DDP synchronises the projection's gradients too."""

    def __init__(self, student: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss(self.student(x), targets)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (call before building the student for reproducible initialisation)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _as_source(teacher_source: Any) -> Any:
    if hasattr(teacher_source, "targets"):
        return teacher_source
    if hasattr(teacher_source, "embed"):
        return OnlineTeacher(teacher_source)
    raise TypeError(f"teacher_source must be a teacher (.embed) or a target source (.targets), "
                    f"got {type(teacher_source).__name__}")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _read_csv(path: Path, max_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= max_step]


def fit(student: nn.Module, student_preprocessing: Preprocessing, teacher_source: Any, views: FaceViews,
        loss: nn.Module, settings: TrainSettings, run_dir: str | Path, *,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None, best_metric: str | None = None,
        best_mode: str = "max", resume: bool = False, log: Callable[[str], None] = print, seed: int = 0,
        workers: int = 0, micro_batches: int = 1, device: torch.device | str | None = None,
        config: dict[str, Any] | None = None, log_every: int = 10, progress: bool = True) -> TrainResult:
    """Distil ``teacher_source`` into ``student`` on ``views``; see the module docstring.

    Args:
        teacher_source: an :class:`OnlineTeacher` (or a bare teacher: fp32 online) or a
            :class:`~distill.train.teacher_cache.TeacherCache` built on the same ``views``.
        loss: a :class:`~distill.losses.DistillLoss` (``loss(student_emb, targets) -> (total, parts)``).
        eval_fn: ``eval_fn(student) -> {metric: value}``, run on rank 0 every ``settings.eval_every``
            epochs (and at the end); ``best_metric`` (default: the first key) picks ``best.pt``.
        micro_batches: split each batch into this many interleaved micro-batches (gradients
            accumulated; BatchNorm statistics per micro-batch). Single process only; with
            ``micro_batches=N`` a run reproduces an N-rank DDP run with the same global batch.
        config: the run's config dict (plain JSON types), stored in every checkpoint.
    """
    env = ddp.current()
    device = torch.device(device) if device is not None else ddp.default_device(env)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    source = _as_source(teacher_source)
    if hasattr(source, "to"):
        source.to(device)
    num_views = getattr(source, "num_views", None)
    if hasattr(source, "matches") and not source.matches(views):
        raise ValueError("the teacher cache was built on different views (length/indices differ); "
                         "build it with the same FaceViews you train on")
    if env.distributed and micro_batches != 1:
        raise ValueError("micro_batches > 1 is for single-process runs; under DDP the ranks are the micro-batches")
    if settings.batch_size % (env.world_size * micro_batches):
        raise ValueError(f"train.batch_size={settings.batch_size} must divide evenly over "
                         f"{env.world_size} rank(s) x {micro_batches} micro-batch(es)")
    local_bs = settings.batch_size // env.world_size
    steps_per_epoch = (len(views) // env.world_size) // local_bs
    if steps_per_epoch == 0:
        raise ValueError(f"{len(views)} training images are fewer than one batch of {settings.batch_size}; "
                         f"lower train.batch_size or add data")
    total_steps = settings.epochs * steps_per_epoch

    student.to(device)
    loss.to(device)
    if settings.channels_last:
        student.to(memory_format=torch.channels_last)
    model: nn.Module = _Distiller(student, loss)
    if env.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model.parameters(), settings)
    scheduler = build_scheduler(optimizer, settings, total_steps)

    step = epoch = step_in_epoch = skipped = 0
    elapsed_before = 0.0
    best_value: float | None = None
    chosen_metric: str | None = best_metric
    evals: list[dict[str, Any]] = []
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    seed_everything(seed + env.rank)
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        student.load_state_dict(state["student"])
        loss.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        skipped, elapsed_before, best_value = state["nonfinite_skipped"], state["elapsed_s"], state["best_value"]
        evals = list(state.get("evals", []))
        set_rng_state(state["rng"][min(env.rank, len(state["rng"]) - 1)])
        if env.is_main:
            log(f"resuming {last_path} at step {step}/{total_steps} (epoch {epoch}, batch {step_in_epoch})")
    elif resume and env.is_main:
        log(f"resume requested but {last_path} does not exist; starting from scratch")

    rows = _read_csv(run_dir / "metrics.csv", step) if env.is_main else []
    writer = None
    if env.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=step if step else None)

    def checkpoint(path: Path = last_path) -> None:
        states = [rng_state()]
        if env.distributed:  # every rank's RNG, so each resumes its own stream
            gathered: list[Any] = [None] * env.world_size
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        if env.is_main:
            save_checkpoint(path, {
                "student": student.state_dict(), "loss": loss.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
                "total_steps": total_steps, "nonfinite_skipped": skipped,
                "elapsed_s": elapsed_before + time.monotonic() - t0, "best_value": best_value, "evals": evals,
                "rng": states, "config": config or {}, "world_size": env.world_size})

    def evaluate() -> None:
        nonlocal best_value, chosen_metric
        if eval_fn is not None and env.is_main:
            was = student.training
            student.eval()
            try:
                metrics = {k: float(v) for k, v in eval_fn(student).items()}
            finally:
                student.train(was)
            name = chosen_metric = best_metric or next(iter(metrics), None)
            row = {"step": step, "epoch": epoch + 1, **metrics}
            evals.append(row)
            _write_csv(run_dir / "eval.csv", evals)
            for k, v in metrics.items():
                writer.add_scalar(f"eval/{k}", v, step)
            log("eval " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            if name is not None:
                if name not in metrics:
                    raise KeyError(f"best_metric {name!r} is not among the eval metrics {sorted(metrics)}")
                value = metrics[name]
                if best_value is None or (value > best_value if best_mode == "max" else value < best_value):
                    best_value = value
                    save_checkpoint(best_path, {"student": student.state_dict(), "loss": loss.state_dict(),
                                                "metric": name, "value": value, "step": step,
                                                "epoch": epoch + 1, "config": config or {}})
        ddp.barrier()

    sampler = EpochViewSampler(len(views), seed=seed, num_views=num_views, rank=env.rank,
                               num_replicas=env.world_size)
    loader = DataLoader(views, batch_size=local_bs, sampler=sampler, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if settings.precision == "bf16"
                else contextlib.nullcontext())
    budget_s = settings.max_minutes * 60 if settings.max_minutes else math.inf
    t0 = time.monotonic()
    start_step, stopped, last_loss = step, "finished", float("nan")
    # With a wall-time budget shorter than the epochs, the cosine decay is fitted into the budget:
    # the step time is measured at steps 5..35 of this process, then re-measured every 2% of the
    # budget (the machine may get busier or quieter); each re-fit continues the cosine smoothly. The
    # horizon is kept in the scheduler state, so a resumed run follows the same schedule.
    horizon = scheduler.lr_lambdas[0]
    calib = (start_step + 5, start_step + 35) if budget_s < math.inf else None  # (from step, to step)
    refit_s = max(1.0, REFIT_FRACTION * budget_s)
    t_calib = 0.0
    bar = tqdm(total=total_steps, initial=step, desc="distill", unit="step", disable=not (progress and env.is_main),
               dynamic_ncols=True)
    model.train()
    while epoch < settings.epochs and stopped == "finished":
        sampler.set_epoch(epoch)
        sampler.set_start(step_in_epoch * local_bs)
        for faces, indices, view_ids in loader:
            targets = source.targets(faces, indices, view_ids).to(device, non_blocking=True)
            x = student_preprocessing(faces.to(device, non_blocking=True))
            if settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            totals, parts_sum = [], {}
            with autocast:
                for m in range(micro_batches):
                    sl = slice(m, None, micro_batches)  # interleaved, as DDP ranks shard
                    total, parts = model(x[sl], targets[sl])
                    totals.append(total / micro_batches)
                    for k, v in parts.items():
                        parts_sum[k] = parts_sum.get(k, 0.0) + v / micro_batches
            batch_loss = torch.stack(totals).sum()
            bad = ddp.any_rank(not bool(torch.isfinite(batch_loss)), device)
            grad_norm = None
            if not bad:
                batch_loss.backward()
                if settings.grad_clip:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
                    bad = ddp.any_rank(not bool(torch.isfinite(grad_norm)), device)
            if bad:
                if settings.nonfinite == "stop":
                    if env.is_main:
                        _write_csv(run_dir / "metrics.csv", rows)
                        writer.close()
                    bar.close()
                    kept = f"the last good checkpoint {last_path} is kept" if last_path.exists() else \
                        "no checkpoint had been written yet"
                    raise NonFiniteLossError(
                        f"non-finite loss/gradient at step {step} (epoch {epoch}); {kept}. Lower train.lr, set "
                        f"train.grad_clip, check the teacher targets, or set train.nonfinite=skip to skip such batches")
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
            else:
                optimizer.step()
            with warnings.catch_warnings():  # after skipped batches torch warns that optimizer.step() did not run
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()
            step += 1
            step_in_epoch += 1
            bar.update(1)
            if calib is not None and step == calib[0]:
                t_calib = time.monotonic()
            elif calib is not None and step == calib[1]:
                now = time.monotonic()
                per_step = (now - t_calib) / max(1, step - calib[0])
                left = budget_s - (elapsed_before + now - t0)
                # rank 0 decides (end, next re-measurement step): every rank then takes the same branches
                fitted, next_calib = ddp.broadcast_object((min(total_steps, step + int(0.97 * left / per_step)),
                                                           step + max(10, int(refit_s / per_step))))
                first = not horizon.fitted
                # re-fits move the end only when it is off by more than 2% (no churn from timing noise)
                if fitted < total_steps or horizon.fitted:
                    if first or abs(fitted - horizon.total_steps) > 0.02 * max(1, horizon.total_steps - step):
                        horizon.refit(step, fitted)
                        if env.is_main:
                            log(f"time budget: {settings.epochs} epochs ({total_steps} steps) do not fit in "
                                f"{settings.max_minutes} min at {per_step:.2f} s/step; the learning-rate schedule "
                                f"now decays to zero at step {horizon.total_steps} (warmup {horizon.warmup_steps} "
                                f"steps)" if first else
                                f"time budget: now {per_step:.2f} s/step; the learning-rate schedule re-fitted to "
                                f"end at step {horizon.total_steps}")
                calib = (step, next_calib) if horizon.fitted else None
                t_calib = now
            end_of_epoch = step_in_epoch >= steps_per_epoch
            if step % log_every == 0 or end_of_epoch or step == total_steps:
                last_loss = float(ddp.all_reduce_mean(batch_loss.detach().float()))
                run_s = time.monotonic() - t0
                sps = (step - start_step) * settings.batch_size / max(run_s, 1e-9)
                if env.is_main:
                    row = {"step": step, "epoch": epoch + step_in_epoch / steps_per_epoch, "loss": last_loss,
                           **{f"loss_{k}": v for k, v in parts_sum.items()}, "lr": scheduler.get_last_lr()[0],
                           "samples_per_s": sps, "elapsed_s": elapsed_before + run_s, "nonfinite_skipped": skipped}
                    if grad_norm is not None:
                        row["grad_norm"] = float(grad_norm)
                    rows.append(row)
                    for k, v in row.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
                    bar.set_postfix(loss=f"{last_loss:.4g}", sps=f"{sps:.0f}")
                    _write_csv(run_dir / "metrics.csv", rows)
            if end_of_epoch:
                if settings.eval_every and (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs:
                    evaluate()
                epoch += 1
                step_in_epoch = 0
            if step % settings.checkpoint_every == 0:
                checkpoint()
            out_of_time = elapsed_before + time.monotonic() - t0 >= budget_s or (
                horizon.fitted and step >= horizon.total_steps)
            if ddp.any_rank(out_of_time, device) and step < total_steps:
                stopped = "time_budget"
                if env.is_main:
                    log(f"time budget of {settings.max_minutes} min reached at step {step}/{total_steps}; "
                        f"checkpointed, continue with resume=True")
                break
            if end_of_epoch:
                break
    bar.close()
    if stopped == "time_budget" and eval_fn is not None and not (evals and evals[-1]["step"] == step):
        evaluate()
    checkpoint()
    run_s = time.monotonic() - t0
    if env.is_main:
        _write_csv(run_dir / "metrics.csv", rows)
        writer.close()
    return TrainResult(steps=step, epochs_completed=epoch, final_loss=last_loss,
                       samples_per_s=(step - start_step) * settings.batch_size / max(run_s, 1e-9),
                       seconds=elapsed_before + run_s, stopped=stopped, last_checkpoint=last_path,
                       best_checkpoint=best_path if best_path.exists() else None,
                       best_metric=chosen_metric,
                       best_value=best_value, nonfinite_skipped=skipped, evals=evals)
