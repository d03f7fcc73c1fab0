"""fit(): learning, artifacts, exact resume after SIGKILL, non-finite handling, time budget, sampler.

Real components: ORL faces (../shared/data/orl), a fixed randomly initialised
MobileNet teacher, the real MobileNet student at alpha 0.25.
"""
from __future__ import annotations

import csv
import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, SHARED
from distill.config import TrainSettings
from distill.data.views import EpochViewSampler, FaceViews
from distill.io import safe_torch_load
from distill.losses import DistillLoss
from distill.preprocess import Preprocessing
from distill.train import NonFiniteLossError, OnlineTeacher, fit, lr_factor
from distill.train.schedule import WarmupCosine
from students import MobileNet
from teachers import CallableTeacher

ORL = SHARED / "data" / "orl"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def orl_faces(people: int = 8, per_person: int = 4, size: int = 64) -> np.ndarray:
    """(people*per_person, size, size, 3) uint8: ORL's grey 92x112 faces, centre-cropped square, RGB."""
    if not (ORL / "s1" / "1.pgm").exists():
        pytest.skip(f"ORL faces not found at {ORL} (set FACEDISTILL_SHARED)")
    out = []
    for p in range(1, people + 1):
        for i in range(1, per_person + 1):
            img = Image.open(ORL / f"s{p}" / f"{i}.pgm").convert("RGB")
            w, h = img.size
            top = (h - w) // 2
            out.append(np.asarray(img.crop((0, top, w, top + w)).resize((size, size), Image.BILINEAR)))
    return np.stack(out)


def flip_jitter(face: np.ndarray, seed: int) -> np.ndarray:
    """A small seeded augmentation: horizontal flip + brightness shift."""
    rng = np.random.default_rng(seed)
    out = face[:, ::-1] if rng.random() < 0.5 else face
    return np.clip(out.astype(np.int16) + int(rng.integers(-20, 21)), 0, 255).astype(np.uint8)


def tiny_teacher(dim: int = 32, size: int = 64, seed: int = 0) -> CallableTeacher:
    """A fixed random MobileNet whose BatchNorm statistics are calibrated on ORL faces.

    Without calibration the eval-mode outputs of a random net collapse to ~1e-15
    (denormal floats, also ~10x slower on CPU).
    """
    torch.manual_seed(seed)
    net = MobileNet(alpha=0.25, input_size=size, embedding_dim=dim, normalize=False)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batch
    net.train()
    with torch.no_grad():
        net(Preprocessing(size)(torch.from_numpy(orl_faces(8, 4, size))))
    net.eval()
    return CallableTeacher(net, name="tiny_mobilenet", preprocessing=Preprocessing(size),
                           embedding_dim=dim, normalized=False)


def tiny_student(dim: int = 16, size: int = 48, seed: int = 1) -> MobileNet:
    torch.manual_seed(seed)
    return MobileNet(alpha=0.25, input_size=size, embedding_dim=dim, normalize=False)


def settings(**kw) -> TrainSettings:
    base = dict(epochs=2, batch_size=8, lr=3e-3, warmup_steps=2, checkpoint_every=3, channels_last=False)
    base.update(kw)
    return TrainSettings(**base)


def test_fit_learns_and_writes_artifacts(tmp_path: Path) -> None:
    views = FaceViews(orl_faces(), augment=flip_jitter, seed=0)
    teacher, student = tiny_teacher(), tiny_student()
    crit = DistillLoss(student_dim=16, teacher_dim=32)
    pre = Preprocessing(48)
    faces = torch.from_numpy(views.faces)

    def distance(s: torch.nn.Module) -> float:
        """Loss on all clean faces, BatchNorm on batch statistics (a copy: no running-stat side effects)."""
        with torch.no_grad():
            return float(crit(copy.deepcopy(s).train()(pre(faces)), teacher.embed(faces))[0])

    def eval_fn(s: torch.nn.Module) -> dict[str, float]:
        assert not s.training
        return {"neg_mse": -distance(s)}

    before = distance(student)
    res = fit(student, pre, OnlineTeacher(teacher), views, crit, settings(epochs=6, eval_every=3, lr=1e-2), tmp_path,
              eval_fn=eval_fn, config={"name": "t"}, log_every=1, progress=False, log=lambda m: None)
    assert distance(student) < 0.85 * before  # measured 39.5 -> 30.1
    assert res.steps == 6 * 4 and res.stopped == "finished" and res.epochs_completed == 6
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss") and len(rows) == 1 + 24
    assert len((tmp_path / "eval.csv").read_text().splitlines()) == 1 + 2  # epochs 3, 6
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    state = safe_torch_load(res.last_checkpoint)  # weights_only=True
    assert state["step"] == 24 and state["config"] == {"name": "t"}
    assert state["loss"]["projection.weight"].shape == (32, 16) and isinstance(state["rng"][0]["torch"], torch.Tensor)
    best = safe_torch_load(res.best_checkpoint)
    assert best["metric"] == "neg_mse" and best["value"] == res.best_value == max(e["neg_mse"] for e in res.evals)


SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from test_trainer import orl_faces, flip_jitter, tiny_teacher, tiny_student, settings
    torch.set_num_threads(1)  # after the imports: conftest sets 2
    from distill.data.views import FaceViews
    from distill.losses import DistillLoss
    from distill.preprocess import Preprocessing
    from distill.train import OnlineTeacher, fit
    run_dir, kill_epoch, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    views = FaceViews(orl_faces(), augment=flip_jitter, seed=0)
    def eval_fn(student):
        if kill_epoch and len(os.listdir(os.path.join(run_dir, "checkpoints"))) and eval_fn.n == kill_epoch:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill mid-run: nothing gets flushed
        eval_fn.n += 1
        return {{"x": 0.0}}
    eval_fn.n = 1
    student = tiny_student()
    fit(student, Preprocessing(48), OnlineTeacher(tiny_teacher()), views, DistillLoss(student_dim=16, teacher_dim=32),
        settings(epochs=4, checkpoint_every=3, eval_every=1), run_dir, eval_fn=eval_fn, resume=resume,
        progress=False, log=lambda m: None)
    torch.save(student.state_dict(), os.path.join(run_dir, "final.pt"))
""")


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(run_dir: Path, kill_epoch: int, resume: bool) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), str(run_dir), str(kill_epoch), "1" if resume else "0"],
                              env=env, capture_output=True, text=True, timeout=240)

    clean = run(tmp_path / "clean", 0, False)
    assert clean.returncode == 0, clean.stderr[-2000:]
    killed = run(tmp_path / "killed", 2, False)  # 4 steps/epoch: killed in epoch 2's eval, after step 8
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = safe_torch_load(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert state["step"] == 6 and state["step_in_epoch"] == 2  # the checkpoint is mid-epoch
    assert not (tmp_path / "killed" / "final.pt").exists()
    resumed = run(tmp_path / "killed", 0, True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "clean" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    steps = [int(r.split(",")[0]) for r in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [4, 8, 10, 12, 16]  # replayed rows after the checkpoint are not duplicated


def test_nonfinite_stop_keeps_checkpoint_and_skip_counts(tmp_path: Path) -> None:
    views = FaceViews(orl_faces(4, 4), seed=0)
    pre = Preprocessing(48)
    student = tiny_student()
    quiet = dict(progress=False, log=lambda m: None)
    fit(student, pre, tiny_teacher(), views, DistillLoss(student_dim=16, teacher_dim=32), settings(epochs=1),
        tmp_path, **quiet)
    good = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    broken = tiny_teacher()
    with torch.no_grad():
        broken.fn.head.fc.weight[0, 0] = float("nan")  # a broken teacher: NaN targets
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        fit(student, pre, broken, views, DistillLoss(student_dim=16, teacher_dim=32), settings(epochs=2),
            tmp_path, resume=True, **quiet)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good

    fresh = tiny_student()
    params = {k: v.clone() for k, v in fresh.named_parameters()}
    res = fit(fresh, pre, broken, views, DistillLoss(student_dim=16, teacher_dim=32),
              settings(epochs=2, nonfinite="skip"), tmp_path / "skip", **quiet)
    assert res.nonfinite_skipped == res.steps == 4
    for k, v in fresh.named_parameters():
        assert torch.equal(v, params[k]), k


def test_time_budget_stops_with_checkpoint_then_resumes(tmp_path: Path) -> None:
    views = FaceViews(orl_faces(4, 4), seed=0)
    quiet = dict(progress=False, log=lambda m: None)
    student = tiny_student()
    res = fit(student, Preprocessing(48), tiny_teacher(), views, DistillLoss(student_dim=16, teacher_dim=32),
              settings(epochs=3, max_minutes=1e-6), tmp_path, **quiet)
    assert res.stopped == "time_budget" and res.steps == 1
    assert safe_torch_load(res.last_checkpoint)["step"] == 1
    res = fit(student, Preprocessing(48), tiny_teacher(), views, DistillLoss(student_dim=16, teacher_dim=32),
              settings(epochs=3), tmp_path, resume=True, **quiet)
    assert res.stopped == "finished" and res.steps == 6


def test_resume_refuses_a_checkpoint_trained_on_other_faces(tmp_path: Path) -> None:
    """A run resumed after its training set changed (images added, or the leak guard excluding others) must
    not continue the old checkpoint as if it had trained on these faces."""
    from distill.config import ConfigError

    faces = orl_faces(4, 4)
    quiet = dict(progress=False, log=lambda m: None)
    loss = lambda: DistillLoss(student_dim=16, teacher_dim=32)  # noqa: E731
    fit(tiny_student(), Preprocessing(48), tiny_teacher(), FaceViews(faces, seed=0), loss(),
        settings(epochs=3, max_minutes=1e-6), tmp_path, **quiet)
    fewer = FaceViews(faces, seed=0, indices=np.arange(len(faces) - 1))
    with pytest.raises(ConfigError, match="another set of training faces"):
        fit(tiny_student(), Preprocessing(48), tiny_teacher(), fewer, loss(), settings(epochs=3), tmp_path,
            resume=True, **quiet)
    res = fit(tiny_student(), Preprocessing(48), tiny_teacher(), FaceViews(faces, seed=0), loss(),
              settings(epochs=3), tmp_path, resume=True, **quiet)   # the same faces: resumes
    assert res.stopped == "finished"


@pytest.mark.parametrize("precision,channels_last,optimizer", [("bf16", True, "adamw"), ("fp32", True, "sgd")])
def test_precision_layout_optimizer_variants(tmp_path: Path, precision: str, channels_last: bool,
                                             optimizer: str) -> None:
    views = FaceViews(orl_faces(4, 4), seed=0)
    res = fit(tiny_student(), Preprocessing(48), tiny_teacher(), views, DistillLoss(student_dim=16, teacher_dim=32),
              settings(epochs=1, precision=precision, channels_last=channels_last, optimizer=optimizer, lr=1e-2),
              tmp_path, progress=False, log=lambda m: None)
    assert res.steps == 2 and np.isfinite(res.final_loss)


def test_lr_schedule_warmup_then_cosine() -> None:
    assert lr_factor(0, 10, 110) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110) == pytest.approx(0.5)
    assert lr_factor(110, 10, 110) == pytest.approx(0.0, abs=1e-12)


def test_refit_continues_the_cosine_without_a_jump() -> None:
    h = WarmupCosine(warmup_steps=10, total_steps=110)
    before = h(60)
    assert before == pytest.approx(lr_factor(60, 10, 110))
    h.refit(60, 210)  # the machine got faster: more steps fit, the decay stretches from here
    assert h(60) == pytest.approx(before) and h(210) == pytest.approx(0.0, abs=1e-12)
    assert h(61) < before and h(61) > lr_factor(61, 10, 110)
    at_100 = h(100)
    h.refit(100, 120)  # slower again: ends sooner, still continuous
    assert h(100) == pytest.approx(at_100) and h(110) < at_100
    assert h(120) == pytest.approx(0.0, abs=1e-12)
    h2 = WarmupCosine(warmup_steps=300, total_steps=10_000)
    h2.refit(35, 5_000)  # fitted during warmup: the warmup is untouched, the cosine starts at its end
    assert h2(35) == pytest.approx(36 / 300) and h2(300) == pytest.approx(1.0)
    h3 = WarmupCosine(warmup_steps=300, total_steps=30_000)
    h3.refit(35, 900)  # a short budgeted run: the warmup shrinks to a tenth of it
    assert h3.warmup_steps == 90 and h3(35) == pytest.approx(36 / 90) and h3(90) == pytest.approx(1.0)
    assert h3(495) == pytest.approx(0.5) and h3(900) == pytest.approx(0.0, abs=1e-12)


def test_sampler_shards_views_and_start() -> None:
    single = EpochViewSampler(20, seed=3)
    single.set_epoch(1)
    keys = list(single)
    ranks = [EpochViewSampler(20, seed=3, rank=r, num_replicas=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    shards = [list(r) for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 10 and not {k for k, _ in shards[0]} & {k for k, _ in shards[1]}
    # rank r's k-th batch of 2 + ... = the single-process k-th global batch of 4 (interleaved)
    for k in range(5):
        assert sorted(shards[0][2 * k:2 * k + 2] + shards[1][2 * k:2 * k + 2]) == sorted(keys[4 * k:4 * k + 4])
    single.set_start(7)
    assert list(single) == keys[7:] and len(single) == 13
    # cached mode: every sample cycles through all K views in K epochs; a batch mixes views
    s = EpochViewSampler(50, seed=0, num_views=4)
    seen: dict[int, set[int]] = {}
    for e in range(4):
        s.set_epoch(e)
        epoch_views = [v for _, v in s]
        assert len(set(epoch_views)) == 4
        for p, v in s:
            seen.setdefault(p, set()).add(v)
    assert all(v == {0, 1, 2, 3} for v in seen.values())


def test_time_budget_fits_the_cosine_decay(tmp_path: Path) -> None:
    """With far more epochs than the budget allows, the lr decays to zero inside the budget."""
    views = FaceViews(orl_faces(4, 4), seed=0)  # 16 faces -> 2 steps per epoch at batch 8
    logs: list[str] = []
    res = fit(tiny_student(), Preprocessing(48), tiny_teacher(), views, DistillLoss(student_dim=16, teacher_dim=32),
              settings(epochs=100_000, max_minutes=0.15, warmup_steps=2), tmp_path, progress=False, log=logs.append)
    assert res.stopped == "time_budget" and 35 <= res.steps < 200_000
    fitted = [m for m in logs if "the learning-rate schedule now decays to zero at step" in m]
    assert len(fitted) == 1
    state = safe_torch_load(res.last_checkpoint)["scheduler"]["lr_lambdas"][0]
    horizon = state["total_steps"]
    # it stops where the fitted schedule ends (or a few steps earlier when the wall clock wins)
    assert 0.8 * horizon <= res.steps <= horizon
    assert state["fitted"] and state["warmup_steps"] == 2
    # re-fits are printed only when the end moves by more than 5% (no line every few steps)
    assert len([m for m in logs if "re-fitted to end at step" in m]) <= 10
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert float(rows[-1]["lr"]) < 0.05 * max(float(r["lr"]) for r in rows)


def test_progress_bar_total_is_where_the_budget_ends(capsys: pytest.CaptureFixture[str]) -> None:
    """With a time budget the bar counts to the fitted end of the schedule, not to train.epochs' steps,
    so its ETA is the budget's; a resumed run whose schedule was fitted starts with that total."""
    from types import SimpleNamespace

    from distill.train import ProgressBar, TimeBudget
    from distill.train.schedule import WarmupCosine

    horizon = WarmupCosine(warmup_steps=2, total_steps=10_000)
    horizon.refit(40, 300)  # as if a previous process fitted the budget: the schedule ends at step 300
    run = SimpleNamespace(state=SimpleNamespace(step=40, total_steps=10_000), env=SimpleNamespace(is_main=True),
                          scheduler=SimpleNamespace(lr_lambdas=[horizon]), status={}, status_changed=False)
    run.set_status = lambda **kw: (run.status.update(kw), setattr(run, "status_changed", True))
    bar, budget = ProgressBar(), TimeBudget(5.0, log=lambda m: None)
    bar.before_train(run)
    assert bar.bar.total == 10_000
    budget.before_train(run)
    bar.after_step(run)
    assert bar.bar.total == 300 and bar.bar.n == 41
    run.set_status(end=20)  # never below the steps already done
    bar.after_step(run)
    assert bar.bar.total == 42
    bar.close(run)
    assert "/42" in capsys.readouterr().err


def test_a_resolution_schedule_trains_early_steps_smaller_and_ends_at_the_target(tmp_path: Path) -> None:
    from distill.config import ConfigError, ResolutionSchedule
    from distill.train.schedule import resolution_applies

    views = FaceViews(orl_faces(4, 4), seed=0)
    student, seen = tiny_student(), []
    student.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[-1]) if _m.training else None)
    res = fit(student, Preprocessing(48), tiny_teacher(), views, DistillLoss(student_dim=16, teacher_dim=32),
              settings(epochs=5, resolution=ResolutionSchedule(size=32, fraction=0.6)), tmp_path, progress=False,
              log=lambda m: None)
    assert res.steps == 10 and seen == [32] * 6 + [48] * 4       # 60% of the steps at 32 px, the rest at 48
    assert student.eval()(torch.zeros(1, 3, 48, 48)).shape == (1, 16)  # the saved student runs at its own size
    with pytest.raises(ConfigError, match="student.pool: gdconv"):
        resolution_applies(ResolutionSchedule(size=32), MobileNet(alpha=0.25, input_size=48, pool="gdconv"), 48)
    with pytest.raises(ConfigError, match="not below"):
        resolution_applies(ResolutionSchedule(size=64), tiny_student(), 48)
