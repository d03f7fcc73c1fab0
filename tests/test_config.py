"""Config validation: every mistake names its key path and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.config import ConfigError, load_config, reference_markdown, validate

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate() -> None:
    cfg = validate({})
    assert cfg.teacher.name == "dlib_resnet" or cfg.teacher.name  # a registered default
    assert cfg.train.batch_size == 64


@pytest.mark.parametrize("doc,expected", [
    ({"train": {"epoch": 3}}, "unknown key 'train.epoch'. Did you mean 'train.epochs'?"),
    ({"trian": {}}, "unknown key 'trian'. Did you mean 'train'?"),
    ({"train": {"loss": {"cosin": 1.0}}}, "Did you mean 'train.loss.cosine'?"),
    ({"data": {"augment": {"hflp": 0.5}}}, "Did you mean 'data.augment.hflip'?"),
])
def test_unknown_keys_name_path_and_closest(doc: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate(doc, "my.yaml")
    assert expected in str(e.value)
    assert str(e.value).startswith("my.yaml:")


@pytest.mark.parametrize("doc,path,allowed", [
    ({"train": {"batch_size": "big"}}, "train.batch_size", "valid integer"),
    ({"train": {"lr": -1}}, "train.lr", "greater than 0"),
    ({"train": {"optimizer": "adam"}}, "train.optimizer", "'adamw' or 'sgd'"),
    ({"data": {"augment": {"hflip": 2}}}, "data.augment.hflip", "less than or equal to 1"),
    ({"student": {"input_size": 8}}, "student.input_size", "greater than or equal to 32"),
])
def test_wrong_values_name_path_value_and_rule(doc: dict, path: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate(doc)
    msg = str(e.value)
    assert f"'{path}'" in msg and allowed in msg


def test_unregistered_names_suggest() -> None:
    with pytest.raises(ConfigError, match=r"'student.name' = 'mobilenet_v1_05' is not registered. Did you mean"):
        validate({"student": {"name": "mobilenet_v1_05"}})


def test_overrides_are_validated_the_same_way(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"train": {"epochs": 2}}))
    cfg = load_config(f, ["train.epochs=5", "student.input_size=96", "train.loss.cosine=0.5"])
    assert (cfg.train.epochs, cfg.student.input_size, cfg.train.loss.cosine) == (5, 96, 0.5)
    with pytest.raises(ConfigError, match=r"^--set train.epoch: unknown key 'train.epoch'. Did you mean 'train.epochs'"):
        load_config(f, ["train.epoch=5"])  # the typo is in --set, not in the file: say so
    with pytest.raises(ConfigError, match=r"^--set train.loss: unknown key 'train.loss.cosin'"):
        load_config(f, ['train.loss={"cosin": 1}'])
    with pytest.raises(ConfigError, match=r"^--set student.name: 'student.name' = 'mobilenet_v1_05' is not"):
        load_config(f, ["student.name=mobilenet_v1_05"])
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"train": {"epoch": 2}}))
    with pytest.raises(ConfigError, match=rf"^{typo}: unknown key 'train.epoch'"):
        load_config(typo, ["train.lr=0.1"])  # a typo in the file still names the file
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(f, ["train.epochs"])
    with pytest.raises(ConfigError, match="'train.epochs' = 'x'"):
        load_config(f, ["train.epochs=x"])
    with pytest.raises(ConfigError, match="'epochs' is a value, not a section"):
        load_config(f, ["train.epochs.x=1"])


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    f = tmp_path / "evil.yaml"
    f.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(f)


def test_env_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  source: folder\n  root: ${MY_FACES:-/default/faces}\n")
    assert load_config(f).data.root == Path("/default/faces")
    monkeypatch.setenv("MY_FACES", "/elsewhere")
    assert load_config(f).data.root == Path("/elsewhere")
    f.write_text("data:\n  root: ${UNSET_FACEDISTILL_VAR}\n")
    with pytest.raises(ConfigError, match="UNSET_FACEDISTILL_VAR is not set"):
        load_config(f)


def test_a_missing_path_names_the_environment_variable_it_came_from(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped configs build data paths from ${FACEDISTILL_...}: the remedy must name that variable."""
    from distill.preflight import find_problems

    monkeypatch.delenv("MY_FACES", raising=False)
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  source: folder\n  root: ${MY_FACES:-nowhere/faces}\n"
                 "eval:\n  pairs:\n    - ${MY_LFW:-nowhere/lfw}/pairs.txt\n")
    cfg = load_config(f)
    assert cfg.env_vars("data.root") == ("MY_FACES",) and cfg.env_vars("eval.pairs[0]") == ("MY_LFW",)
    problems = "\n".join(find_problems(cfg))
    assert "set the environment variable MY_FACES (the config builds data.root from it) or data.root" in problems
    assert "(eval.pairs[0].file) is missing; set the environment variable MY_LFW" in problems
    # a value given by --set has no variable behind it: the remedy is the key
    cfg = load_config(f, [f"data.root={tmp_path / 'other'}"])
    assert cfg.env_vars("data.root") == ()
    assert "; set data.root)" in "\n".join(find_problems(cfg))


def test_pairs_accept_paths_or_specs() -> None:
    cfg = validate({"eval": {"pairs": ["a/pairsDevTest.txt", {"file": "b/pairs.txt", "teacher_only": True}]}})
    assert [p.label for p in cfg.eval.pairs] == ["pairsDevTest", "pairs"]
    assert cfg.eval.pairs[1].teacher_only


def test_all_pairs_spec_parses_and_typos_are_named() -> None:
    cfg = validate({"eval": {"pairs": ["a/pairsDevTest.txt", {"file": "a/pairsDevTest.txt", "all_pairs": True}]}})
    assert [p.all_pairs for p in cfg.eval.pairs] == [False, True]
    with pytest.raises(ConfigError, match=r"'eval.pairs.0.all_pair'. Did you mean 'eval.pairs.0.all_pairs'"):
        validate({"eval": {"pairs": [{"file": "a/pairsDevTest.txt", "all_pair": True}]}})
    with pytest.raises(ConfigError, match=r"'eval.pairs.0.all_pairs' = 'maybe'"):
        validate({"eval": {"pairs": [{"file": "a/pairsDevTest.txt", "all_pairs": "maybe"}]}})


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    load_config(path)


def test_readme_config_reference_is_generated() -> None:
    readme = (ROOT / "README.md").read_text()
    assert reference_markdown().strip() in readme, "regenerate with: python -m distill.config"
