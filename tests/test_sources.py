"""Every registered training source kind (data.source) is reachable from the config and answers for itself."""
from __future__ import annotations

import typing

import pytest

from distill.config import DataSettings, load_config
from distill.data.prepare import source_kind
from distill.data.sources import SOURCE_KINDS, SourceKind


def test_the_config_names_exactly_the_registered_kinds():
    names = typing.get_args(DataSettings.model_fields["source"].annotation)
    assert sorted(names) == SOURCE_KINDS.names()


@pytest.mark.parametrize("name", SOURCE_KINDS.names())
def test_each_kind_plans_and_checks_itself(name, tmp_path):
    cfg = load_config(None, [f"data.source={name}", f"data.root={tmp_path / 'absent'}", f"data.cache_dir={tmp_path}"])
    kind = source_kind(cfg)
    assert isinstance(kind, SourceKind) and type(kind).__doc__ and SOURCE_KINDS.get(name).description
    assert kind.describe(cfg, missing=True)["source"] == name
    problems = kind.problems(cfg)
    if name == "synthetic":
        assert problems == []                                  # generated offline: nothing can be missing
    else:
        assert problems and all("data.root" in p for p in problems)  # the key to set, named
