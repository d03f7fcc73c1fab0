"""fit() under DistributedDataParallel (2 CPU processes, gloo) equals a single-process run.

Equivalence: with interleaved sampler shards, the two ranks' k-th batches are
the halves of the single-process k-th global batch, and DDP averages the two
ranks' gradients. The single-process reference uses ``micro_batches=2``: the
same halves, the same per-half BatchNorm statistics, the gradients averaged.
So parameters agree up to float summation order (all-reduce vs autograd
accumulation), ~1e-7 relative per step; AdamW over 8 steps keeps that well
under the 1e-4 tolerance. BatchNorm *running* statistics are not compared:
under DDP they come from rank 0's halves only (broadcast_buffers), in the
reference from both halves.
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distill.data.views import FaceViews
from distill.io import safe_torch_load
from distill.losses import DistillLoss
from distill.preprocess import Preprocessing
from distill.train import OnlineTeacher, fit
from test_trainer import flip_jitter, orl_faces, settings, tiny_student, tiny_teacher  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(run_dir: Path, micro_batches: int = 1) -> torch.nn.Module:
    views = FaceViews(orl_faces(4, 4), augment=flip_jitter, seed=0)
    student = tiny_student()
    fit(student, Preprocessing(48), OnlineTeacher(tiny_teacher()), views, DistillLoss(student_dim=16, teacher_dim=32),
        settings(epochs=4, batch_size=8, checkpoint_every=3), run_dir, micro_batches=micro_batches,
        progress=False, log=lambda m: None, eval_fn=lambda s: {"steps": 1.0})
    return student


def _worker(rank: int, world: int, port: int, run_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        student = _train(Path(run_dir))
        torch.save({k: v for k, v in student.named_parameters()}, Path(run_dir) / f"params{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_match_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    reference = dict(_train(tmp_path / "single", micro_batches=2).named_parameters())
    ranks = [torch.load(tmp_path / "ddp" / f"params{r}.pt", weights_only=True) for r in range(2)]
    for name, value in reference.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)  # DDP keeps replicas identical
        torch.testing.assert_close(ranks[0][name], value.detach(), rtol=1e-3, atol=1e-4, msg=name)
    # rank 0 alone wrote the run directory
    state = safe_torch_load(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and state["step"] == 8 and len(state["rng"]) == 2
    assert len((tmp_path / "ddp" / "metrics.csv").read_text().splitlines()) > 1
    # and the run moved away from the start (the comparison is not between two untrained nets)
    start = dict(tiny_student().named_parameters())
    assert max((start[k] - v).abs().max().item() for k, v in reference.items()) > 1e-3


def _sharded_worker(rank: int, world: int, port: int, root: str) -> None:
    """Build a per-rank teacher cache (counting this rank's teacher calls), train on it, then rebuild."""
    import json

    from distill.train import build_teacher_cache
    from test_teacher_cache import CountingTeacher

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        views = FaceViews(orl_faces(4, 4), augment=flip_jitter, seed=0)
        teacher = CountingTeacher(tiny_teacher())
        cache = build_teacher_cache(teacher, views, 2, Path(root) / "cache", batch_size=4, log=lambda m: None,
                                    per_rank=True)
        student = tiny_student()
        fit(student, Preprocessing(48), cache, views, DistillLoss(student_dim=16, teacher_dim=32),
            settings(epochs=2, batch_size=8), Path(root) / "run", progress=False, log=lambda m: None)
        dist.barrier()
        if rank == 1:  # damage rank 1's shard only: only rank 1 recomputes
            data = cache.path / "embeddings.f32"
            data.write_bytes(b"\0" + data.read_bytes()[1:])
        dist.barrier()
        again = CountingTeacher(tiny_teacher())
        build_teacher_cache(again, views, 2, Path(root) / "cache", batch_size=4, log=lambda m: None, per_rank=True)
        (Path(root) / f"rank{rank}.json").write_text(json.dumps({
            "path": str(cache.path), "rows": len(cache.face_index), "face_index": cache.face_index.tolist(),
            "calls": teacher.calls, "rebuild_calls": again.calls,
            "targets": cache.get(cache.face_index, [1] * len(cache.face_index)).tolist()}))
    finally:
        dist.destroy_process_group()


def test_per_rank_cache_shards_write_read_and_rebuild_alone(tmp_path: Path) -> None:
    import json

    import numpy as np

    from distill.data.views import shard_positions
    from distill.train import build_teacher_cache

    mp.spawn(_sharded_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    views = FaceViews(orl_faces(4, 4), augment=flip_jitter, seed=0)
    full = build_teacher_cache(tiny_teacher(), views, 2, tmp_path / "single", batch_size=4, log=lambda m: None)
    assert ranks[0]["path"] != ranks[1]["path"]                            # a folder per rank
    for r, info in enumerate(ranks):
        pos = shard_positions(16, r, 2)
        assert info["rows"] == 8 and info["face_index"] == np.asarray(views.indices)[pos].tolist()
        assert info["calls"] == 2 * 2                                      # 8 rows in blocks of 4, 2 views: its own
        np.testing.assert_allclose(info["targets"], full.get(pos, [1] * 8).numpy(), rtol=1e-5, atol=1e-6)
    assert ranks[0]["rebuild_calls"] == 0 and ranks[1]["rebuild_calls"] == 4  # the damaged shard alone is redone
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()          # training read only its own shard
