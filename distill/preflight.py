"""Fail fast: name every missing weight file and data folder a config needs, before any heavy work.

Example::

    problems = find_problems(cfg)        # [] when everything is there (never downloads)
    preflight(cfg)                       # raises MissingArtifactsError listing them all
"""
from __future__ import annotations

from pathlib import Path

from distill.config import PATH_RULE, Config, key_remedy
from distill.errors import InputError
from distill.resolve import teacher_weight_problems


class MissingArtifactsError(InputError, FileNotFoundError):
    """Weights or data the config needs are not here and cannot be fetched now (CLI exit code 2)."""


def preflight(cfg: Config) -> None:
    """Raise :class:`MissingArtifactsError` naming every missing artifact and how to get it; nothing is computed."""
    problems = find_problems(cfg)
    if problems:
        raise missing_artifacts_error(problems)


def missing_artifacts_error(problems: list[str]) -> MissingArtifactsError:
    """The one error for a config whose weights or data are missing (``distill run`` and its ``--dry-run``)."""
    return MissingArtifactsError(
        "cannot start; nothing was computed. Missing:\n" + "\n".join(f"  - {p}" for p in problems)
        + f"\n(Paths: {PATH_RULE}.)"
        + "\nTo try the product fully offline, run `distill run configs/quickstart.yaml` "
          "(synthetic faces, the dlib teacher shipped on PyPI).")


def find_problems(cfg: Config) -> list[str]:
    """Every missing weight file or data folder the config needs (never downloads)."""
    problems = teacher_weight_problems(cfg)
    from distill.data.prepare import source_kind  # every kind registered

    problems += source_kind(cfg).problems(cfg)
    missing: dict[str, str] = {}  # path -> the first key that names it
    for i, spec in enumerate(cfg.eval.pairs):
        if spec.folder is not None:
            if not spec.folder.is_dir():
                problems.append(f"evaluation data: eval.pairs[{i}].folder {spec.folder} is not a folder")
            continue
        if spec.bin is not None:
            if not spec.bin.is_file():
                problems.append(f"evaluation data: eval.pairs[{i}].bin {spec.bin} does not exist (an insightface "
                                f".bin validation set such as lfw.bin, from the dataset folder of the training set)")
            continue
        for key, f in (("file", spec.file), ("only_people_in", spec.only_people_in)):
            if f is not None and not f.is_file():
                missing.setdefault(str(f), f"eval.pairs[{i}].{key}")
    root = cfg.eval.images_root or cfg.data.root
    if any(s.file is not None for s in cfg.eval.pairs) and root is not None and not Path(root).is_dir():
        missing.setdefault(f"{root}/", "eval.images_root" if cfg.eval.images_root else "data.root")
    offline = ""
    if missing and cfg.eval.download_lfw:
        from distill.data.download import LFW_URL, is_reachable

        if is_reachable(LFW_URL):
            missing = {}  # downloaded when the data is prepared
        else:
            offline = f"the LFW download from {LFW_URL} is impossible offline; "
    return problems + [f"evaluation data: {path} ({key}) is missing; {offline}{key_remedy(cfg, key)} to a local copy"
                       for path, key in missing.items()]
