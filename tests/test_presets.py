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


# -- issue 16, defect 7: any file, nothing outside the folders ---------------------------------

DEEP = {
    "deep array": b"seed = " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "deep inline table": b"prompt = " + b"{a = " * 3000 + b'"x"' + b"}" * 3000 + b"\n",
}


@pytest.mark.parametrize("name", sorted(DEEP))
def test_a_deeply_nested_preset_is_one_line(store, name):
    """Was a RecursionError at start-up (--preset) and `internal error` over OSC."""
    store.user_dir.mkdir(parents=True)
    (store.user_dir / "deep.toml").write_bytes(DEEP[name])
    with pytest.raises(NodeServerError, match=r"preset 'deep' \(.*\): not valid TOML: values nest too deeply"):
        store.recall("deep")


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00\x01", "is not UTF-8 text"),
    (bytes(range(256)), "is not UTF-8 text"),
    (b"seed = 1" + b"0" * 5000 + b"\n", "not valid TOML"),
    (b"seed = 99999999999999999999999999\n", "seed: "),
    (b"strength = nan\n", "strength: "),
    (b"strength = inf\n", "strength: "),
    (b'prompt = ["a", "b"]\n', "prompt: "),
    (b"seed = {a = 1}\n", "seed: "),
    (b"# " + b"x" * 70_000 + b"\n", "is larger than 64 KiB"),
])
def test_junk_in_a_preset_is_one_line(store, content, message):
    store.user_dir.mkdir(parents=True)
    (store.user_dir / "junk.toml").write_bytes(content)
    with pytest.raises(NodeServerError, match=message) as info:
        store.recall("junk")
    assert "\n" not in str(info.value)


def test_a_preset_that_links_outside_its_folder_is_not_read(store, tmp_path):
    secret = tmp_path / "elsewhere" / "secret.toml"
    secret.parent.mkdir()
    secret.write_text('prompt = "read from outside the preset folder"\n')
    store.user_dir.mkdir(parents=True)
    (store.user_dir / "leak.toml").symlink_to(secret)
    with pytest.raises(NodeServerError, match=r"preset 'leak' .* links outside its folder"):
        store.recall("leak")
    assert "leak" not in store.names()


def test_links_inside_the_folder_and_a_linked_folder_still_work(tmp_path):
    real = tmp_path / "dotfiles" / "presets"
    real.mkdir(parents=True)
    (real / "mine.toml").write_text("seed = 5\n")
    (real / "alias.toml").symlink_to(real / "mine.toml")
    linked = tmp_path / "config-presets"
    linked.symlink_to(real, target_is_directory=True)  # the user folder itself is a link: fine
    store = PresetStore(None, linked)
    assert store.recall("alias") == {"seed": 5} and store.recall("mine") == {"seed": 5}
    assert store.names() == ["alias", "mine"]


def test_a_broken_link_is_not_a_preset(store, tmp_path):
    store.user_dir.mkdir(parents=True)
    (store.user_dir / "gone.toml").symlink_to(tmp_path / "missing.toml")
    with pytest.raises(NodeServerError, match="no preset named 'gone'"):
        store.recall("gone")
    assert "gone" not in store.names()


def test_a_deep_preset_over_osc_is_an_error_not_an_internal_error(store):
    import socket

    from pythonosc import osc_message_builder, osc_packet

    from fakes import FakeTarget
    from node_server.control import OscControl

    store.user_dir.mkdir(parents=True)
    (store.user_dir / "deep.toml").write_bytes(DEEP["deep array"])
    ctl = OscControl(FakeTarget(store), port=0).start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5.0)
    try:  # a /ping first: the server answers a sender it knows in full (an unknown one's answers are
        # cut to the size of its datagram, docs/OSC.md)
        sock.sendto(osc_message_builder.OscMessageBuilder(address="/ping").build().dgram, ("127.0.0.1", ctl.port))
        assert osc_packet.OscPacket(sock.recv(65536)).messages[0].message.address == "/pong"
        b = osc_message_builder.OscMessageBuilder(address="/preset")
        b.add_arg("deep")
        sock.sendto(b.build().dgram, ("127.0.0.1", ctl.port))
        replies = [(m.message.address, m.message.params) for m in osc_packet.OscPacket(sock.recv(65536)).messages]
    finally:
        sock.close()
        ctl.close()
    assert replies[0][0] == "/error"
    reason = replies[0][1][0]
    assert "values nest too deeply" in reason and "internal error" not in reason
    assert ctl.stats()["errors"] == 1 and ctl.internal_errors == 0


# -- properties (hypothesis) -------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_any_preset_bytes_are_params_or_a_one_line_error(tmp_path_factory, data):
    user = tmp_path_factory.mktemp("presets")
    (user / "p.toml").write_bytes(data)
    try:
        params = PresetStore(None, user).recall("p")
    except NodeServerError as exc:
        assert "\n" not in str(exc)
        return
    assert set(params) <= set(PRESET_KEYS)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(PRESET_KEYS + ("description",)),
                       st.integers(min_value=-(10**30), max_value=10**30) | st.floats() | st.text(max_size=600)
                       | st.booleans(), max_size=6))
def test_any_preset_values_are_params_or_a_one_line_error(tmp_path_factory, values):
    import math

    user = tmp_path_factory.mktemp("presets")
    lines = []
    for k, v in values.items():
        if isinstance(v, float) and math.isnan(v):
            lines.append(f"{k} = nan")
        else:
            lines.append(f"{k} = {dump_flat_toml({'x': v}).split(' = ', 1)[1].strip()}")
    (user / "p.toml").write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        params = PresetStore(None, user).recall("p")
    except NodeServerError as exc:
        assert "\n" not in str(exc)
        return
    assert set(params) <= set(PRESET_KEYS)
    assert all(not isinstance(v, float) or math.isfinite(v) for v in params.values())
