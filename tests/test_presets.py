"""Preset files: shipped presets, save/recall round trip, name and content validation."""

from __future__ import annotations

import sys

import pytest

from node_server.control.presets import BUILTIN_DIR, PRESET_KEYS, PresetStore, dump_flat_toml
from node_server.errors import NodeServerError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture
def store(tmp_path):
    return PresetStore(BUILTIN_DIR, tmp_path / "user")


def test_shipped_presets_are_valid_instructions(store):
    names = store.names()
    assert len(names) >= 6
    for name in names:
        raw = store.load(name)
        assert raw["description"]
        assert len(raw["prompt"].split()) >= 6  # an instruction, not a keyword
        assert set(store.recall(name)) <= set(PRESET_KEYS) and "description" not in store.recall(name)


def test_save_recall_round_trip_and_shadowing(store):
    params = {"prompt": 'make it "glossy" \\ shiny\nnow, ünïcode', "seed": 12, "steps": 3,
              "strength": 0.75, "refresh": "every:8", "batch_size": 4}
    path = store.save("oil-painting", params, description="mine")
    assert path.parent == store.user_dir
    assert store.recall("oil-painting") == {k: v for k, v in params.items() if k != "batch_size"}
    assert not store.is_builtin("oil-painting")  # the user copy shadows the shipped one
    assert (BUILTIN_DIR / "oil-painting.toml").read_text() != path.read_text()  # shipped file untouched
    assert store.names().count("oil-painting") == 1
    assert store.load("oil-painting")["description"] == "mine"


def test_int_strength_and_integral_float_seed_are_accepted(store):
    store.user_dir.mkdir(parents=True)
    (store.user_dir / "x.toml").write_text("strength = 1\nseed = 4.0\n")
    assert store.recall("x") == {"strength": 1.0, "seed": 4}


@pytest.mark.parametrize("bad", ["", "../evil", "a/b", "a\\b", ".hidden", "x" * 65, "sp ace", "é", "a:b"])
def test_bad_names_are_refused(store, bad):
    with pytest.raises(NodeServerError, match="preset name"):
        store.recall(bad)
    with pytest.raises(NodeServerError, match="preset name"):
        store.save(bad, {"seed": 1})
    assert not store.user_dir.exists() or list(store.user_dir.iterdir()) == []


def test_longest_name_and_inner_dot_are_fine(store):
    name = "a." + "b" * 62
    store.save(name, {"seed": 2})
    assert store.recall(name) == {"seed": 2}


def test_missing_preset_names_itself_and_lists_others(store):
    with pytest.raises(NodeServerError, match=r"no preset named 'nothing-here' \(available: .*neon"):
        store.recall("nothing-here")


@pytest.mark.parametrize(
    "content,message",
    [
        ('prompt = "x"\nbrightness = 2\n', "unknown key 'brightness'"),
        ("steps = 9\n", "steps: must be 1..4, got 9"),
        ('seed = "one"\n', "seed: expected a number"),
        ('refresh = "never"\n', "refresh: must be on-change"),
        ("description = 3\n", "'description' must be a string"),
        ("prompt = \n", "not valid TOML"),
    ],
)
def test_bad_files_are_reported(store, content, message):
    store.user_dir.mkdir(parents=True)
    (store.user_dir / "bad.toml").write_text(content)
    with pytest.raises(NodeServerError, match=message):
        store.recall("bad")


def test_save_needs_a_user_dir_and_something_to_save(tmp_path):
    with pytest.raises(NodeServerError, match="no user preset folder"):
        PresetStore(BUILTIN_DIR, None).save("x", {"seed": 1})
    with pytest.raises(NodeServerError, match="nothing to save"):
        PresetStore(BUILTIN_DIR, tmp_path).save("x", {"batch_size": 2})


def test_flat_toml_writer_round_trips():
    values = {"a": "q\"b\\s\n\t\x01é", "b": 3, "c": 2.0, "d": 1e-7, "e": True, "f": False, "g": -4}
    assert tomllib.loads(dump_flat_toml(values)) == values
