"""RecordIO at the field's scale: reading a synthetic 200,000-record ``train.rec`` and building its teacher
cache, then the projection for MS1MV2 (5,822,653 images) on one GPU and on eight.

The benchmark writes its own set (not committed) in a temporary folder, in insightface's layout (header record,
images, identity records; the dmlc framing of :mod:`distill.data.recordio`): 2,000 identities x 100 images, each
a 112x112 JPEG (quality 90) of 256 procedural textures, so decoding costs what a face crop costs. Measured:
opening the index, every record read in order, random reads, decoding (and re-framing to ``dlib_150``), the
labels, and a K=1 float16 teacher cache of every record through the product's own path
(:class:`~distill.data.recordio_source.RecordFaces` -> :func:`~distill.train.build_teacher_cache`) with a
teacher that costs almost nothing (a 8x8 average pool and a fixed 512-D projection), so the number is the
reading, decoding and cache-writing rate, the ceiling any teacher then divides.

The projection needs a GPU teacher rate, which this machine cannot measure; it assumes IResNet-50 forward
passes at 3x insightface's published arcface_torch training rate on 8 x A10 (fp16 + TF32, batch 1024:
~3,360 samples/s; ``benchmarks/train/nvidia_a10.md`` in deepinsight/insightface; a training step is about a
forward and a backward of twice its cost), i.e. ~10,080 images/s on 8 A10 and ~1,260 on one.

Run alone::

    .venv/bin/python -m benchmarks --sections recordio --update
"""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

#: MS1MV2 (insightface's faces_emore): images and identities
MS1MV2_IMAGES, MS1MV2_IDS = 5_822_653, 85_742
#: insightface's arcface_torch training rate, IResNet-50, 8 x A10, fp16 + TF32, batch 1024 (samples/s)
A10X8_TRAIN_RATE = 3_360
#: forward-only images/s per training sample/s (a step = forward + backward of ~2x its cost)
FORWARD_PER_TRAIN = 3.0
_MAGIC = 0xCED7230A


def _frame(payload: bytes) -> bytes:
    """One unsplit dmlc record (the synthetic payloads never hold the magic at a 4-byte boundary)."""
    words = np.frombuffer(payload[:len(payload) // 4 * 4], "<u4")
    assert not (words == _MAGIC).any(), "a synthetic payload holds the magic: it would need splitting"
    return struct.pack("<II", _MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4)


def _pack(label: float | tuple[float, float], key: int, body: bytes = b"") -> bytes:
    if isinstance(label, tuple):
        return struct.pack("<IfQQ", 2, 0.0, key, 0) + struct.pack("<2f", *label) + body
    return struct.pack("<IfQQ", 0, float(label), key, 0) + body


def _textures(n: int = 256, size: int = 112) -> list[bytes]:
    """``n`` JPEGs of smooth random colour fields plus grain: a face crop's decoding cost, not its content."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        low = rng.integers(0, 256, (7, 7, 3)).astype(np.uint8)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        img += rng.integers(-12, 13, img.shape, dtype=np.int16)
        out.append(cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
                   .tobytes())
    return out


def write_synthetic_set(root: Path, identities: int, per_identity: int) -> dict[str, Any]:
    """insightface's layout: header (key 0), images ``1..N``, identity records; ``.idx`` and ``property``."""
    root.mkdir(parents=True, exist_ok=True)
    jpegs, n = _textures(), identities * per_identity
    first = n + 1
    with open(root / "train.rec", "wb") as rec, open(root / "train.idx", "w") as idx:
        def put(key: int, payload: bytes) -> None:
            idx.write(f"{key}\t{rec.tell()}\n")
            rec.write(_frame(payload))
        put(0, _pack((first, first + identities), 0))
        for i in range(n):
            put(i + 1, _pack(i // per_identity, i + 1, jpegs[i % len(jpegs)]))
        for j in range(identities):
            put(first + j, _pack((1 + j * per_identity, 1 + (j + 1) * per_identity), first + j))
    (root / "property").write_text(f"{identities},112,112\n")
    return {"records": n, "identities": identities, "rec_bytes": (root / "train.rec").stat().st_size}


def _rate(n: int, fn: Callable[[], Any]) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    s = time.perf_counter() - t0
    return n / s, s


def _cache_rate(root: Path, cache_dir: Path) -> dict[str, Any]:
    """K=1 float16 teacher cache of every record through RecordFaces and build_teacher_cache."""
    import torch

    from distill.data.recordio import RecordIOFaces
    from distill.data.recordio_source import RecordFaces
    from distill.data.views import FaceViews
    from distill.preprocess import Preprocessing
    from distill.train import build_teacher_cache
    from teachers import CallableTeacher

    data = RecordIOFaces(root)
    faces = RecordFaces(data, np.arange(len(data)), "arcface_112", "arcface_112")
    proj = torch.nn.Linear(3 * 14 * 14, 512, bias=False)
    torch.nn.init.normal_(proj.weight, std=0.05)
    net = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(), proj).eval()
    teacher = CallableTeacher(net, name="pool512", preprocessing=Preprocessing(112, alignment="arcface_112"),
                              embedding_dim=512, normalized=False)
    views = FaceViews(faces, None, seed=0)
    t0 = time.perf_counter()
    cache = build_teacher_cache(teacher, views, 1, cache_dir, batch_size=128, log=lambda m: None, dtype="float16")
    seconds = time.perf_counter() - t0
    size = (cache.path / "embeddings.f16").stat().st_size
    return {"records_per_s": len(data) / seconds, "seconds": seconds, "cache_bytes": size,
            "mb_per_million_per_view": size / len(data) * 1e6 / 1e6}


def bench_recordio(quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Reading and caching rates on a synthetic set (200,000 records; 4,000 when ``quick``) and the projection."""
    from distill.data.recordio import RecordIOFaces
    from distill.data.templates import reframe_crop

    ids, per = (40, 100) if quick else (2_000, 100)
    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="recordio_bench_"))
    try:
        t0 = time.perf_counter()
        made = write_synthetic_set(tmp / "set", ids, per)
        log(f"recordio: wrote {made['records']:,} records ({made['rec_bytes'] / 1e6:.0f} MB) in "
            f"{time.perf_counter() - t0:.0f} s")
        n = made["records"]
        os.system("sync")
        open_rate, open_s = _rate(n, lambda: RecordIOFaces(tmp / "set"))
        data = RecordIOFaces(tmp / "set")
        _, labels_s = _rate(n, data.labels)
        seq, seq_s = _rate(n, lambda: [data.raw(i) for i in range(n)])
        pick = np.random.default_rng(0).integers(0, n, min(n, 20_000))
        rnd, _ = _rate(len(pick), lambda: [data.raw(int(i)) for i in pick])
        dec, _ = _rate(min(len(pick), 5_000), lambda: [data.image(int(i)) for i in pick[:5_000]])
        ref, _ = _rate(min(len(pick), 5_000), lambda: [reframe_crop(data.image(int(i)), "arcface_112", "dlib_150")
                                                      for i in pick[:5_000]])
        log(f"recordio: index {open_s:.2f} s, labels {labels_s:.2f} s, sequential {seq:,.0f} rec/s, random "
            f"{rnd:,.0f} rec/s, decode {dec:,.0f} img/s, decode + re-frame {ref:,.0f} img/s")
        cache = _cache_rate(tmp / "set", tmp / "cache")
        log(f"recordio: K=1 float16 cache {cache['records_per_s']:,.0f} rec/s ({cache['seconds']:.0f} s), "
            f"{cache['mb_per_million_per_view']:.0f} MB per 1M images per view")
        return {"records": n, "identities": ids, "load_average_at_start": load, "bytes_per_record": made["rec_bytes"] / n,
                "open_seconds": open_s, "labels_seconds": labels_s, "index_bytes_per_record": 16,
                "sequential_records_per_s": seq, "random_records_per_s": rnd, "decode_per_s": dec,
                "decode_reframe_per_s": ref, "cache": cache}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def projection(cache_per_s: float, dim: int = 512) -> dict[str, Any]:
    """MS1MV2 cache build time and disk for K = 1, 4, 16 views, on one A10-class GPU and on eight, and how
    many processes of the cache path at the measured ``cache_per_s`` it takes to keep eight GPUs fed."""
    gpu1 = A10X8_TRAIN_RATE * FORWARD_PER_TRAIN / 8
    rows = []
    for k in (1, 4, 16):
        passes = MS1MV2_IMAGES * k
        rows.append({"views": k, "teacher_passes": passes, "gpu1_hours": passes / gpu1 / 3600,
                     "gpu8_hours": passes / (8 * gpu1) / 3600,
                     "disk_gb_fp16": passes * dim * 2 / 1e9, "disk_gb_fp32": passes * dim * 4 / 1e9})
    return {"images": MS1MV2_IMAGES, "identities": MS1MV2_IDS, "dim": dim, "gpu1_images_per_s": gpu1,
            "assumption": f"IResNet-50 forward = {FORWARD_PER_TRAIN:g} x arcface_torch's 8 x A10 training rate "
                          f"({A10X8_TRAIN_RATE:,} samples/s, fp16 + TF32, batch 1024; deepinsight/insightface "
                          "benchmarks/train/nvidia_a10.md) / 8", "rows": rows,
            "feed_processes_8": 8 * gpu1 / cache_per_s, "feed_processes_1": gpu1 / cache_per_s}


def to_markdown(r: dict[str, Any]) -> str:
    """Section 10 of BENCHMARKS.md."""
    c = r["cache"]
    p = projection(c["records_per_s"])
    lines = [f"A synthetic insightface-layout set made by the benchmark: {r['records']:,} records of "
             f"{r['identities']:,} identities, {r['bytes_per_record']:,.0f} bytes each (112x112 JPEG); one process; "
             f"load average {r.get('load_average_at_start', float('nan')):.1f} at its start (above 0.5: other work "
             "shared the cores, and the rates are lower bounds).",
             "", "| step | rate |", "|---|---|",
             f"| open the index (int64 keys + offsets: {r['index_bytes_per_record']} B per record) | "
             f"{r['open_seconds']:.2f} s |",
             f"| identity labels (from the identity records) | {r['labels_seconds']:.2f} s |",
             f"| read every record in order | {r['sequential_records_per_s']:,.0f} records/s |",
             f"| random reads | {r['random_records_per_s']:,.0f} records/s |",
             f"| decode (RGB) | {r['decode_per_s']:,.0f} images/s |",
             f"| decode + re-frame to dlib_150 | {r['decode_reframe_per_s']:,.0f} images/s |",
             f"| K=1 float16 teacher cache, near-free teacher | {c['records_per_s']:,.0f} records/s "
             f"({c['seconds']:.0f} s) |",
             "", f"Cache size: **{c['mb_per_million_per_view']:,.0f} MB per 1M images per view** at 512-D float16 "
                 f"(measured file; float32 twice that).", "",
             f"**MS1MV2 projection** ({p['images']:,} images, {p['dim']}-D teacher). Assumed GPU rate: "
             f"{p['gpu1_images_per_s']:,.0f} images/s per GPU ({p['assumption']}); not measured here.", "",
             "| views K | teacher passes | 1 GPU | 8 GPUs | disk float16 | disk float32 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {x['views']} | {x['teacher_passes'] / 1e6:.1f}M | {x['gpu1_hours']:.1f} h | {x['gpu8_hours']:.1f} h "
              f"| {x['disk_gb_fp16']:.0f} GB | {x['disk_gb_fp32']:.0f} GB |" for x in p["rows"]]
    lines += ["", f"The GPU hours hold only if the CPUs keep up: at the cache path's measured "
                  f"{c['records_per_s']:,.0f} records/s per process (decoding alone: {r['decode_per_s']:,.0f}/s), one "
                  f"GPU needs {p['feed_processes_1']:.1f} feeding processes (`data.workers`) and eight need "
                  f"{p['feed_processes_8']:.0f}, i.e. a 16-core host per 8 GPUs at best; the gap between decoding and "
                  "the whole path (batch stacking, the teacher's preprocessing, the cache write) is where a GPU run "
                  "should look first. Under torchrun with `train.cache_shards: per_rank` each of 8 ranks writes and "
                  "reads 1/8 of that disk in its own folder."]
    return "\n".join(lines)
