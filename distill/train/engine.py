"""One training run's objects and its step: what :func:`~distill.train.fit` loops over and hooks see.

:class:`Run` holds the student, the loss, the (DDP-wrapped) model, optimiser, schedule, data
loader and the :class:`TrainState`; :meth:`Run.step` is one optimiser step on one batch: teacher
targets, student forward (fp32 or bf16 autocast, NCHW or channels_last), loss, backward, clipping,
the non-finite policy and the schedule.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from distill.config import TrainSettings
from distill.data.views import EpochViewSampler, FaceViews
from distill.preprocess import Preprocessing

from . import ddp
from .schedule import build_optimizer, build_scheduler
from .sources import as_source


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf with ``nonfinite='stop'``; the last good checkpoint is kept."""


@dataclass
class TrainState:
    """Where a run is: counters, timing, the last batch's (device) loss, evaluations so far."""

    total_steps: int
    steps_per_epoch: int
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    #: the step just taken ended an epoch (``epoch`` already counts it)
    epoch_done: bool = False
    skipped: int = 0
    elapsed_before: float = 0.0
    t0: float = field(default_factory=time.monotonic)
    loss: torch.Tensor | None = None
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_norm: torch.Tensor | None = None
    stop: str | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None

    def elapsed(self) -> float:
        """Seconds of training, earlier (resumed) sessions included."""
        return self.elapsed_before + time.monotonic() - self.t0


class _Distiller(nn.Module):
    """student + loss in one module, so DDP synchronises the projection's gradients too."""

    def __init__(self, student: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss(self.student(x), targets)


class Run:
    """Everything one :func:`~distill.train.fit` call trains with (see the module docs).

    Raises:
        ValueError: the batch does not divide over ranks x micro-batches, there are fewer images than
            one batch, or the teacher cache was built on other views.
    """

    def __init__(self, student: nn.Module, preprocessing: Preprocessing, teacher_source: Any, views: FaceViews,
                 loss: nn.Module, settings: TrainSettings, run_dir: Path, *, seed: int, workers: int,
                 micro_batches: int, device: torch.device | str | None, config: dict[str, Any] | None) -> None:
        self.env = ddp.current()
        self.run_dir = Path(run_dir)
        #: the resumable checkpoint (written by the Checkpointer hook)
        self.last_path = self.run_dir / "checkpoints" / "last.pt"
        self.device = torch.device(device) if device is not None else ddp.default_device(self.env)
        self.student, self.loss, self.settings, self.preprocessing = student, loss, settings, preprocessing
        self.config, self.micro_batches = config or {}, micro_batches
        self.source = as_source(teacher_source)
        if hasattr(self.source, "to"):
            self.source.to(self.device)
        #: which faces this run trains on (a resumed checkpoint must have trained on the same ones)
        self.train_faces = views.identity()
        if hasattr(self.source, "matches") and not self.source.matches(views):
            raise ValueError("the teacher cache was built on different views (length/indices differ); "
                             "build it with the same FaceViews you train on")
        if self.env.distributed and micro_batches != 1:
            raise ValueError("micro_batches > 1 is for single-process runs; under DDP the ranks are the micro-batches")
        if settings.batch_size % (self.env.world_size * micro_batches):
            raise ValueError(f"train.batch_size={settings.batch_size} must divide evenly over "
                             f"{self.env.world_size} rank(s) x {micro_batches} micro-batch(es)")
        self.local_bs = settings.batch_size // self.env.world_size
        steps_per_epoch = (len(views) // self.env.world_size) // self.local_bs
        if steps_per_epoch == 0:
            raise ValueError(f"{len(views)} training images are fewer than one batch of {settings.batch_size}; "
                             f"lower train.batch_size or add data")
        self.state = TrainState(settings.epochs * steps_per_epoch, steps_per_epoch)
        student.to(self.device)
        loss.to(self.device)
        if settings.channels_last:
            student.to(memory_format=torch.channels_last)
        self.model: nn.Module = _Distiller(student, loss)
        if self.env.distributed:
            self.model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = build_optimizer(self.model.parameters(), settings)
        self.scheduler = build_scheduler(self.optimizer, settings, self.state.total_steps)
        self.sampler = EpochViewSampler(len(views), seed=seed, num_views=getattr(self.source, "num_views", None),
                                        rank=self.env.rank, num_replicas=self.env.world_size,
                                        local=bool(getattr(self.source, "per_rank", False)),
                                        groups=views.position_groups(), shares=views.shares)
        self.loader = DataLoader(views, batch_size=self.local_bs, sampler=self.sampler, drop_last=True,
                                 num_workers=workers, persistent_workers=workers > 0,
                                 pin_memory=self.device.type == "cuda")
        self.autocast: Callable[[], Any] = ((lambda: torch.autocast(self.device.type, dtype=torch.bfloat16))
                                            if settings.precision == "bf16" else contextlib.nullcontext)
        #: the module evaluated and deployed (the student, or an EMA of it)
        self.eval_model: nn.Module = student
        #: extra checkpoint entries: name -> function returning a weights_only-safe value (EMA weights)
        self.extra_state_providers: dict[str, Callable[[], Any]] = {}
        #: what a resumed checkpoint held under "extra"
        self.extra_state: dict[str, Any] = {}
        self.hooks: list[Any] = []
        self.status: dict[str, Any] = {}
        self.status_changed = False
        self.last_loss = float("nan")
        #: seconds spent per phase of :meth:`step` when profiling (``profile()``), else None
        self.phases: dict[str, float] | None = None

    def profile(self) -> dict[str, float]:
        """Start accumulating the wall time of each phase of :meth:`step` (teacher, forward, backward, optimizer)."""
        self.phases = {}
        return self.phases

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        if self.phases is None:
            yield
            return
        t0 = time.perf_counter()
        yield
        self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0

    def set_status(self, **items: Any) -> None:
        """Update what the progress bar shows after the step count."""
        self.status.update(items)
        self.status_changed = True

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This epoch's remaining batches (a resumed run starts mid-epoch)."""
        self.sampler.set_epoch(self.state.epoch)
        self.sampler.set_start(self.state.step_in_epoch * self.local_bs)
        return iter(self.loader)

    def next_batch(self, batches: Iterator[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The next ``(faces, indices, view_ids)`` batch of ``batches``, or None at the epoch's end (timed as
        the ``data`` phase: decoding and augmentation, or waiting for the loader's workers)."""
        with self._phase("data"):
            return next(batches, None)

    def phase(self, name: str) -> Any:
        """A context manager timing ``name`` while profiling (a no-op otherwise)."""
        return self._phase(name)

    def input_size(self) -> int:
        """The input side of this step: ``train.resolution.size`` for the first ``fraction`` of the budget
        (of ``train.max_minutes`` when set: the step count fitted to a time budget grows while the small steps
        are fast, so a share of it would arrive late; else of the steps), then the student's own."""
        sched, s = self.settings.resolution, self.state
        if sched is None:
            return self.preprocessing.input_size
        if self.settings.max_minutes:
            early = s.elapsed() < sched.fraction * self.settings.max_minutes * 60
        else:
            early = s.step < sched.fraction * s.total_steps
        return sched.size if early else self.preprocessing.input_size

    def step(self, faces: torch.Tensor, indices: torch.Tensor, view_ids: torch.Tensor) -> None:
        """One optimiser step on one batch, then the counters (the epoch advances on its last batch).

        Raises:
            NonFiniteLossError: a non-finite loss or gradient with ``nonfinite='stop'``.
        """
        s, settings = self.state, self.settings
        with self._phase("teacher"):
            targets = self.source.targets(faces, indices, view_ids).to(self.device, non_blocking=True)
        with self._phase("forward"):
            x = self.preprocessing(faces.to(self.device, non_blocking=True))
            size = self.input_size()
            if size != x.shape[-1]:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            if settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.optimizer.zero_grad(set_to_none=True)
            totals, parts = [], {}
            with self.autocast():
                for m in range(self.micro_batches):
                    sl = slice(m, None, self.micro_batches)  # interleaved, as DDP ranks shard
                    total, p = self.model(x[sl], targets[sl])
                    totals.append(total / self.micro_batches)
                    for k, v in p.items():
                        parts[k] = parts.get(k, 0.0) + v / self.micro_batches
            batch_loss = torch.stack(totals).sum()
            bad = ddp.any_rank(not bool(torch.isfinite(batch_loss)), self.device)
        grad_norm = None
        if not bad:
            with self._phase("backward"):
                batch_loss.backward()
            if settings.grad_clip:
                with self._phase("optimizer"):
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip)
                    bad = ddp.any_rank(not bool(torch.isfinite(grad_norm)), self.device)
        if bad:
            if settings.nonfinite == "stop":
                kept = (f"the last good checkpoint {self.last_path} is kept" if self.last_path.exists()
                        else "no checkpoint had been written yet")
                raise NonFiniteLossError(
                    f"non-finite loss/gradient at step {s.step} (epoch {s.epoch}); {kept}. Lower train.lr, set "
                    f"train.grad_clip, check the teacher targets, or set train.nonfinite=skip to skip such batches")
            s.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
        else:
            with self._phase("optimizer"):
                self.optimizer.step()
        with warnings.catch_warnings():  # after skipped batches torch warns that optimizer.step() did not run
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        s.loss, s.parts, s.grad_norm = batch_loss.detach(), parts, grad_norm
        s.step += 1
        s.step_in_epoch += 1
        s.epoch_done = s.step_in_epoch >= s.steps_per_epoch
        if s.epoch_done:
            s.epoch += 1
            s.step_in_epoch = 0
