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
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distill.preprocess import ALIGNMENTS


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI exits with code 2."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- data
class SyntheticSettings(Section):
    identities: int = Field(120, ge=4, description="number of synthetic identities (>= 2 on each side of the split)")
    images_per_identity: int = Field(8, ge=2, description="images drawn per identity")
    size: int = Field(250, ge=64, le=1024, description="side of each generated image (LFW-like framing)")
    seed: int = Field(0, description="generator seed: same seed, same bytes")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="fraction of identities held out for test pairs")


class AugmentSettings(Section):
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


class DataSettings(Section):
    source: Literal["synthetic", "folder"] = Field("synthetic", description=(
        "'synthetic': generate identities offline (the embedded default); 'folder': an identity-folder tree"))
    root: Optional[Path] = Field(None, description="identity-folder root (root/<identity>/<image>) when source=folder")
    synthetic: SyntheticSettings = Field(default_factory=SyntheticSettings)
    exclude_identities_in: list[Path] = Field(default_factory=list, description=(
        "pairs files whose people are excluded from training (identity-disjoint protocol)"))
    holdout_fraction: Optional[float] = Field(None, gt=0, lt=1, description=(
        "alternatively hold out this seeded fraction of identities"))
    max_train_images: Optional[int] = Field(None, ge=1, description="cap the training set (quick runs)")
    alignment: Optional[Literal[ALIGNMENTS]] = Field(None, description=(  # type: ignore[valid-type]
        "face alignment template; default: the one the teacher declares (anything else is an error)"))
    align_backend: Literal["dlib", "mtcnn", "none"] = Field("dlib", description=(
        "landmark detector for alignment; 'none' = images are already aligned crops"))
    no_face: Literal["center", "skip"] = Field("center", description=(
        "images where no face is found: centre crop (counted and reported) or skip"))
    cache_dir: Path = Field(Path(".cache/facedistill"), description="aligned-face and teacher-embedding caches")
    augment: AugmentSettings = Field(default_factory=AugmentSettings)
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes (0 = in the main process)")


# --------------------------------------------------------------------------- models
class TeacherSettings(Section):
    name: str = Field("dlib_resnet", description="registered teacher (see `distill models`)")
    weights: Optional[str] = Field(None, description=(
        "weights: a named set (facenet: vggface2, casia-webface) or a local file path"))
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the teacher")
    precision: Literal["fp32", "bf16"] = Field("bf16", description=(
        "teacher inference precision (bf16 autocast ~3.7x faster on AMX CPUs, cosine >= 0.9999 to fp32)"))


class StudentSettings(Section):
    name: str = Field("mobilenet_v1_050", description="registered student (see `distill models`)")
    input_size: int = Field(112, ge=32, le=512, description="input resolution (the paper's rho x 224)")
    alpha: Optional[float] = Field(None, gt=0, le=4, description="width multiplier (mobilenet_v1 only)")
    embedding_dim: Optional[int] = Field(None, ge=2, description="default: the teacher's embedding dim")
    normalize: Optional[bool] = Field(None, description="L2-normalise output; default: as the teacher does")
    head_bn: bool = Field(True, description="BatchNorm1d after the embedding projection")
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the student")


# --------------------------------------------------------------------------- training
class LossSettings(Section):
    mse: float = Field(1.0, ge=0, description="weight of the paper's squared-difference term")
    cosine: float = Field(0.0, ge=0, description="weight of a (1 - cosine) term")
    relational: float = Field(0.0, ge=0, description="weight of a batch pairwise-distance matching term")
    normalize: Optional[bool] = Field(None, description="L2-normalise both sides; default: if the teacher does")
    projection: Optional[bool] = Field(None, description=(
        "learnable linear projection student->teacher dim; default: only when the dims differ"))


class TrainSettings(Section):
    teacher_mode: Literal["online", "cached"] = Field("online", description=(
        "online: teacher embeds every augmented batch; cached: K fixed views per image computed once"))
    cache_views: int = Field(4, ge=1, le=256, description="K augmented views per image in cached mode")
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
    nonfinite: Literal["stop", "skip"] = Field("stop", description=(
        "non-finite loss: stop keeping the last good checkpoint, or skip the batch"))
    loss: LossSettings = Field(default_factory=LossSettings)


# --------------------------------------------------------------------------- evaluation / output
class PairsSpec(Section):
    file: Path = Field(description="pairs file in the LFW format (View 1 or View 2)")
    name: Optional[str] = Field(None, description="protocol name in reports (default: the file name)")
    only_people_in: Optional[Path] = Field(None, description=(
        "keep only pairs whose people all appear in this pairs file (e.g. View 2 restricted to DevTest people)"))
    teacher_only: bool = Field(False, description=(
        "evaluate the teacher alone (the pairs may share people with the training set)"))
    all_pairs: bool = Field(False, description=(
        "instead of the file's pairs, evaluate every pair of images of its people (those also in "
        "only_people_in, if given): genuine = same person, impostor = different people; "
        "enough impostors for TAR at low FAR (LFW DevTest people: 3.7M)"))

    @property
    def label(self) -> str:
        return self.name or self.file.stem


class EvalSettings(Section):
    pairs: list[PairsSpec] = Field(default_factory=list, description=(
        "pairs protocols to evaluate on: a path, or {file, name, only_people_in, teacher_only, all_pairs}; "
        "synthetic data brings its own"))
    images_root: Optional[Path] = Field(None, description="where pairs' images live (default: data.root)")
    download_lfw: bool = Field(False, description=(
        "when LFW (pairs files + images_root) is missing and the machine is online, download it from the "
        "official archive (checksums verified) into the pairs files' folder"))
    flip_tta: bool = Field(False, description="average the embedding of the image and its mirror")
    identification: bool = Field(True, description="1:N gallery/probe identification with FAISS")
    latency: bool = Field(True, description="measure CPU latency (batch 1 and 32)")
    batch_size: int = Field(128, ge=1)

    @field_validator("pairs", mode="before")
    @classmethod
    def _paths_are_specs(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"file": item} if isinstance(item, (str, Path)) else item for item in v]
        return v


class Config(Section):
    name: str = Field("run", description="run name (used in reports)")
    seed: int = Field(0, description="seed for splits, augmentation and initialisation")
    data: DataSettings = Field(default_factory=DataSettings)
    teacher: TeacherSettings = Field(default_factory=TeacherSettings)
    student: StudentSettings = Field(default_factory=StudentSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    out: Path = Field(Path("runs/run"), description="run directory")

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
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(Config, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f" Did you mean '{'.'.join(loc[:-1] + (close[0],))}'?" if close else ""
        return f"{source}: unknown key '{path}'.{hint} Valid keys here: {', '.join(valid)}."
    return f"{source}: '{path}' = {err.get('input')!r}: {err['msg']}."


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


def validate(doc: Any, source: str = "config") -> Config:
    """Validate a plain dict into :class:`Config`, or raise :class:`ConfigError` listing every problem."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(doc).__name__}")
    try:
        cfg = Config.model_validate(doc)
    except ValidationError as e:
        raise ConfigError("\n".join(_format_error(err, source) for err in e.errors())) from None
    check_names(cfg, source)
    return cfg


def check_names(cfg: Config, source: str) -> None:
    """Registry names are resolved here, where configs are read."""
    from students import STUDENTS
    from teachers import TEACHERS

    for path, registry, name in (("student.name", STUDENTS, cfg.student.name),
                                 ("teacher.name", TEACHERS, cfg.teacher.name)):
        if name not in registry:
            close = difflib.get_close_matches(name, registry.names(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: '{path}' = {name!r} is not registered.{hint} "
                              f"Registered: {', '.join(registry.names())}.")


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a YAML document.

    This is how shipped configs point at data and weights that live elsewhere
    (e.g. ``root: ${FACEDISTILL_LFW:-../shared/data/lfw}/lfw-deepfunneled``).
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


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (YAML) or start from defaults, apply ``--set`` overrides, validate."""
    doc: Any = {}
    source = "config"
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
    if overrides:
        if not isinstance(doc, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        doc = apply_overrides(doc, overrides)
    return validate(expand_env(doc), source)


def to_yaml(cfg: Config) -> str:
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
    text = ""
    if rows:
        title = prefix.rstrip(".") or "top level"
        text += f"\n**{title}**\n\n| key | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    for key, sub in nested:
        text += reference_markdown(sub, f"{key}.")
    return text


if __name__ == "__main__":  # python -m distill.config > the README's config reference
    print(reference_markdown())
