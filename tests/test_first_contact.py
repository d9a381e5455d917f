"""A VJ's first hour against a running server, driven by outside clients (python-osc's client and
server, liblo's oscsend/oscdump where installed, a ZeroMQ client): a 16:9 size, frames passed
through before any prompt, the strength cap reported to the sender and the feedback target once,
controls of another model family refused with the family's name, a start from a prompt or a
preset, and `ServerApp.model_info()`."""

from __future__ import annotations

import copy
import io
import queue
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from pythonosc import dispatcher, osc_server, udp_client

from bridges.zmq_client import ZmqClient
from node_server.errors import NodeServerError
from node_server.server.config import ServeConfig, resolve

SIZE = 64


class Feedback:
    """The `--feedback` target: python-osc's own UDP server, recording every message it gets."""

    def __init__(self):
        self.messages: "queue.Queue[tuple[str, tuple]]" = queue.Queue()
        d = dispatcher.Dispatcher()
        d.set_default_handler(lambda address, *args: self.messages.put((address, args)))
        self.server = osc_server.ThreadingOSCUDPServer(("127.0.0.1", 0), d)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def errors(self, wait: float) -> list[str]:
        """Every /error received within `wait` seconds (the /status bundles are skipped)."""
        out, deadline = [], time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                address, args = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if address == "/error":
                out.append(args[0])
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def sender_errors(client: udp_client.SimpleUDPClient, wait: float) -> list[str]:
    """The /error replies that came back to the sender's own socket within `wait` seconds."""
    out, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        for message in client.get_messages(timeout=max(0.01, deadline - time.monotonic())):
            if message.address == "/error":
                out.append(message.params[0])
        break
    return out


def start(bundle_or_factory, *, feedback: Feedback | None = None, **config):
    """A ServerApp on loopback (any free ports) around `bundle`, opened and loaded."""
    from node_server.engine.factory import build_engine
    from node_server.server.app import ServerApp

    cfg = ServeConfig(zmq_in="tcp://127.0.0.1:0", zmq_out="tcp://127.0.0.1:0", osc_port=0, oscquery_port=0,
                      size=config.pop("size", SIZE), device="cpu", model=config.pop("model", "synthetic:tiny"),
                      feedback=f"127.0.0.1:{feedback.port}" if feedback else None, **config)
    if callable(bundle_or_factory):
        factory = bundle_or_factory
    else:
        def factory(app, params):
            return build_engine(bundle_or_factory, params, size=app.config.size, device="cpu",
                                encoder_image_size=64, progress=False)
    out = io.StringIO()
    app = ServerApp(cfg, engine_factory=factory, out=out, progress=False)
    app.open()
    before = app.model_info()
    app.load()
    app.banner = out.getvalue()
    app.info_before_load = before
    return app


def capped(bundle, top=0.08, default=0.05):
    out = copy.copy(bundle)
    out.max_strength, out.defaults = top, {"strength": default}
    return out


def osc_client(app) -> udp_client.SimpleUDPClient:
    """A python-osc client the server knows: after a /ping it answers this sender's errors whole
    (an unknown sender's answers are cut to the size of what it sent; docs/OSC.md)."""
    client = udp_client.SimpleUDPClient("127.0.0.1", app.control.port)
    client.send_message("/ping", None)
    deadline = time.monotonic() + 5
    while not any(m.address == "/pong" for m in client.get_messages(timeout=0.5)):
        assert time.monotonic() < deadline, "no /pong"
    return client


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# ------------------------------------------------------------------ model_info and the strength cap


def test_model_info_is_none_before_the_load_then_says_family_and_real_range(tiny_bundle):
    app = start(capped(tiny_bundle))
    try:
        assert app.info_before_load is None
        assert app.model_info() == {"family": "dreamlite", "max_strength": 0.08, "width": SIZE, "height": SIZE,
                                    "model": "synthetic:tiny"}
    finally:
        app.close()
    app = start(tiny_bundle, size=(64, 96))
    try:
        assert app.model_info()["max_strength"] == 1.0  # uncapped
        assert (app.model_info()["width"], app.model_info()["height"]) == (96, 64)
    finally:
        app.close()


def test_a_strength_above_the_cap_is_reported_to_the_sender_and_the_feedback_target_once(tiny_bundle):
    feedback = Feedback()
    app = start(capped(tiny_bundle), feedback=feedback)
    client = osc_client(app)
    try:
        client.send_message("/strength", 0.5)
        wait_for(lambda: app.current_params()["strength"] == 0.08)  # applied, at the cap
        want = "/strength: 0.5 is above this model's max_strength 0.08 (the top of its training); running at 0.08"
        assert sender_errors(client, 1.0) == [want]
        assert feedback.errors(1.0) == [want]
        for address, value in (("/seed", 3), ("/steps", 2), ("/prompt", "sepia"), ("/strength", 0.06)):
            client.send_message(address, value)  # unrelated changes, and one within the range: silent
        wait_for(lambda: abs(app.current_params()["strength"] - 0.06) < 1e-6 and app.current_params()["seed"] == 3)
        assert sender_errors(client, 0.5) == [] and feedback.errors(0.5) == []
        client.send_message("/preset", "comic")  # a preset made for another model, strength 1.0
        wait_for(lambda: app.current_params()["prompt"].startswith("redraw it as a comic"))
        assert sender_errors(client, 1.0) == [want.replace("/strength: 0.5", "/preset: 1")]
        assert app.current_params()["strength"] == 0.08
    finally:
        client._sock.close()
        app.close()
        feedback.close()


def test_a_capped_strength_counts_as_applied_not_as_an_error(tiny_bundle):
    """The notice is a remark on a change that was applied: a new sender gets it cut to the size
    of its datagram (docs/OSC.md) and is known from then on; neither the OSC counters nor
    /status/errors count it as an error."""
    app = start(capped(tiny_bundle))
    client = udp_client.SimpleUDPClient("127.0.0.1", app.control.port)  # no /ping first: a new sender
    try:
        client.send_message("/strength", 0.5)
        wait_for(lambda: app.current_params()["strength"] == 0.08)
        (cut,) = sender_errors(client, 1.0)
        assert cut and "/strength: 0.5 is above this model's max_strength 0.08".startswith(cut)
        stats = app.control.stats()
        assert stats["applied"] == 1 and stats["errors"] == 0
        assert app.status().errors == 0
        client.send_message("/steps", 9)  # a real error: counted, answered whole (the sender is known now)
        assert sender_errors(client, 1.0) == ["/steps: must be 1..4, got 9"]
        assert app.control.stats()["errors"] == 1
    finally:
        client._sock.close()
        app.close()


@pytest.mark.skipif(not (shutil.which("oscsend") and shutil.which("oscdump")), reason="liblo-tools not installed")
def test_the_strength_notice_reaches_liblos_oscdump(tiny_bundle):
    """liblo's own tools, as the issue was found with: oscsend to the server, oscdump as the
    feedback target."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dump = subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in dump.stdout], daemon=True).start()
    import types

    app = start(capped(tiny_bundle), feedback=types.SimpleNamespace(port=port))
    try:
        time.sleep(0.3)
        subprocess.run(["oscsend", "127.0.0.1", str(app.control.port), "/strength", "f", "0.5"], check=True)
        deadline, errors = time.monotonic() + 5, []
        while time.monotonic() < deadline and not errors:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if " /error s " in line:
                errors.append(line)
        assert errors and "above this model's max_strength 0.08" in errors[0] and "running at 0.08" in errors[0]
    finally:
        app.close()
        dump.terminate()
        dump.wait(5)


# ------------------------------------------------------------------ model families


def test_controls_of_another_family_get_an_error_naming_the_running_family(tiny_bundle):
    from node_server.models import build_synthetic_sd

    feedback = Feedback()
    app = start(tiny_bundle, feedback=feedback)
    client = osc_client(app)
    try:
        said = []
        for address, value in (("/cfg", "self"), ("/guidance", 2.0), ("/seed_mode", "per-frame")):
            client.send_message(address, value)
            errors = sender_errors(client, 1.0)
            assert errors == [f"{address}: applies to SD-class (CLIP img2img) models only; the running model is of "
                              "the DreamLite (vision-aware edit) family"], errors
            said += errors
        assert feedback.errors(1.0) == said  # the feedback target hears the same
        assert app.current_params()["cfg"] == "none" and app.current_params()["seed_mode"] == "fixed"
        # blending is for both families: accepted and applied
        client.send_message("/blend", ["oil painting", 0.7, "neon city", 0.3])
        client.send_message("/seed_blend/2/weight", 0.5)
        wait_for(lambda: abs(app.current_params()["blend_2_weight"] - 0.3) < 1e-6 and
                 app.current_params()["seed_blend_2_weight"] == 0.5)
        assert sender_errors(client, 0.5) == []
    finally:
        client._sock.close()
        app.close()
        feedback.close()

    app = start(build_synthetic_sd("sd-turbo-tiny", seed=0), model="synthetic:sd-turbo-tiny")
    client = osc_client(app)
    try:
        assert app.model_info()["family"] == "sd"
        client.send_message("/refresh", "every-batch")
        assert sender_errors(client, 1.0) == ["/refresh: applies to DreamLite (vision-aware edit) models only; "
                                              "the running model is of the SD-class (CLIP img2img) family"]
        client.send_message("/preset", "comic")  # lists refresh: skipped on this family, the rest applies
        wait_for(lambda: app.current_params()["prompt"].startswith("redraw it as a comic"))
        assert sender_errors(client, 0.5) == []
        client.send_message("/cfg", "self")
        wait_for(lambda: app.current_params()["cfg"] == "self")
    finally:
        client._sock.close()
        app.close()


def test_every_control_names_its_families():
    from node_server.control.inventory import BY_ADDRESS, CONTROLS, FAMILIES

    assert all(c.families and set(c.families) <= set(FAMILIES) for c in CONTROLS)
    only = {a: BY_ADDRESS[a].families for a in ("/cfg", "/guidance", "/seed_mode", "/refresh")}
    assert only == {"/cfg": ("sd",), "/guidance": ("sd",), "/seed_mode": ("sd",), "/refresh": ("dreamlite",)}
    for address in ("/prompt", "/strength", "/blend", "/seed_blend", "/blend/3/weight", "/lllite/strength"):
        assert BY_ADDRESS[address].families == FAMILIES


# ------------------------------------------------------------------ no prompt: pass-through


def test_a_server_with_no_prompt_passes_frames_through_and_says_so(tiny_bundle):
    feedback = Feedback()
    app = start(tiny_bundle, feedback=feedback)
    client = ZmqClient(app.zmq.in_endpoint, app.zmq.out_endpoint)
    try:
        assert client.wait_connected(5.0)
        picture = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        client.send(picture, id=1)
        header, image = client.recv(timeout=20)
        assert header["id"] == 1 and header["prompt"] == ""
        np.testing.assert_array_equal(image, picture)  # unchanged, not grey mush
        assert app.status().prompt == ""
        assert "running; no prompt yet: frames pass through unchanged" in app.banner
        osc_client(app).send_message("/prompt", "make it an old sepia photograph")
        deadline = time.monotonic() + 30
        while True:
            client.send(picture, id=2)
            got = client.recv(timeout=20)
            if got and got[0]["prompt"] == "make it an old sepia photograph":
                break
            assert time.monotonic() < deadline
        assert np.abs(got[1].astype(int) - picture.astype(int)).mean() > 1
        prompts, deadline = [], time.monotonic() + 5
        while "make it an old sepia photograph" not in prompts and time.monotonic() < deadline:
            try:
                address, args = feedback.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if address == "/status/prompt":
                prompts.append(args[0])
        assert prompts[0] == "" and prompts[-1] == "make it an old sepia photograph"
    finally:
        client.close()
        app.close()
        feedback.close()


# ------------------------------------------------------------------ sizes, prompts and presets at start


def test_serve_runs_a_16_9_size_from_the_flag_or_the_config_file(tmp_path):
    import argparse

    from node_server.commands import serve
    from node_server.server.app import default_engine_factory

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    base = ["--model", "synthetic:tiny", "--device", "cpu", "--zmq-in", "tcp://127.0.0.1:0",
            "--zmq-out", "tcp://127.0.0.1:0", "--osc-port", "0", "--oscquery-port", "0",
            "--presets-dir", str(tmp_path), "--encoder-size", "64"]
    toml = tmp_path / "serve.toml"
    toml.write_text('size = "96x64"\nprompt = "neon edges"\n')
    assert serve.config_from_args(parser.parse_args(base + ["--size", "448x256"])).size == (256, 448)
    cfg = serve.config_from_args(parser.parse_args(base + ["--config", str(toml)]))
    assert cfg.size == (64, 96) and cfg.prompt == "neon edges"
    assert serve.config_from_args(parser.parse_args(base + ["--config", str(toml), "--size", "64"])).size == 64

    from node_server.server.app import ServerApp

    out = io.StringIO()
    app = ServerApp(cfg, engine_factory=default_engine_factory, out=out, progress=False)
    app.open()
    try:
        assert "size 96x64," in out.getvalue()
        app.load()
        client = ZmqClient(app.zmq.in_endpoint, app.zmq.out_endpoint)
        try:
            assert client.wait_connected(5.0)
            camera = np.zeros((720, 1280, 3), np.uint8)  # a 16:9 camera: 96x64 is 3:2, so it loses little
            client.send(camera, id=5)
            header, image = client.recv(timeout=30)
        finally:
            client.close()
        assert (header["w"], header["h"]) == (96, 64) and image.shape == (64, 96, 3)
        assert header["prompt"] == "neon edges"  # started on the config file's prompt
    finally:
        app.close()


@pytest.mark.parametrize("text, reason", [
    ('size = "100x64"\n', "width must be a multiple of 32"),
    ('size = "96x"\n', "expected 512 or WxH"),
    ("size = [96, 64]\n", 'must be 512 or "WxH"'),
    ("size = 8192\n", "in 32..4096"),
    ("prompt = 5\n", "prompt must be a string"),
    (f'prompt = "{"x" * 501}"\n', "prompt is 501 characters"),
    ('prompt = "a\\u0000b"\n', "NUL"),
])
def test_bad_size_or_prompt_in_the_config_file_is_one_line(tmp_path, text, reason):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(NodeServerError, match=reason) as info:
        resolve({"model": "synthetic:tiny"}, str(f))
    assert "\n" not in str(info.value)


def test_a_start_prompt_wins_over_the_start_presets(tiny_bundle, tmp_path):
    (tmp_path / "low.toml").write_text('prompt = "make it an old sepia photograph"\nstrength = 0.05\n')
    app = start(capped(tiny_bundle), preset="low", prompt="turn it into a blueprint drawing",
                presets_dir=str(tmp_path))
    try:
        params = app.current_params()
        assert params["prompt"] == "turn it into a blueprint drawing" and params["strength"] == 0.05
        assert app.status().prompt == "turn it into a blueprint drawing"  # the warm-up encoded it
        assert "no prompt yet" not in app.banner
    finally:
        app.close()
    app = start(capped(tiny_bundle), preset="comic", presets_dir=str(tmp_path))  # above the cap
    try:
        assert app.current_params()["strength"] == 0.08 and app.current_params()["steps"] == 2
        assert "node-server serve: strength 1 is above this model's max_strength 0.08" in app.banner
    finally:
        app.close()


# ------------------------------------------------------------------ help texts


def test_help_texts_name_the_default_model_and_every_synthetic_size(capsys):
    from node_server.cli import build_parser
    from node_server.commands.synth_model import SIZES

    parser = build_parser()
    for argv, needles in ((["serve", "--help"], ["demo (the default", "448x256", "--prompt"]),
                          (["render", "--help"], ["demo (the default", "--preset", "--strict"]),
                          (["synth-model", "--help"], list(SIZES)),
                          (["--help"], ["sd-turbo"])):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        text = " ".join(capsys.readouterr().out.split())
        for needle in needles:
            assert needle in text, (argv, needle)
    top = build_parser().format_help()
    assert "tiny or paper shapes" not in top


# ------------------------------------------------------------------ the docs a first user reads


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _table_fields(text: str) -> list[str]:
    import re

    fields = []
    for line in text.splitlines():
        m = re.match(r"\|\s*(`[^|]+`)\s*\|", line)
        if m:
            fields += re.findall(r"`([^`]+)`", m.group(1))
    return fields


def test_protocol_md_describes_the_output_header_as_the_server_sends_it(tiny_bundle):
    """A client written from docs/PROTOCOL.md alone reads the fields where they are: `server` is a
    nested object, and every field the server sends is listed (and nothing else)."""
    import json
    import re

    from node_server.models.loader import frame_size_for

    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    output = doc.split("### Output header")[1].split("## Order")[0]
    top, nested = output.split("The `server` object:")
    app = start(tiny_bundle)
    client = ZmqClient(app.zmq.in_endpoint, app.zmq.out_endpoint)
    try:
        assert client.wait_connected(5.0)
        client.send(np.zeros((48, 80, 3), np.uint8), id=9)
        header, _ = client.recv(timeout=20)
    finally:
        client.close()
        app.close()
    assert sorted(_table_fields(top)) == sorted(header)  # v id t w h c dtype prompt server
    assert isinstance(header["server"], dict)
    assert sorted(_table_fields(nested)) == sorted(header["server"])
    example = json.loads(re.search(r"```json\n(.*?)```", output, re.S).group(1))
    assert sorted(example) == sorted(header) and sorted(example["server"]) == sorted(header["server"])
    demo = frame_size_for("demo")
    assert f"{demo}x{demo} for the default demo model" in top  # not "512x512 by default"
    assert "512x512 by default" not in (ROOT / "README.md").read_text()


def test_resolume_md_uses_a_demo_style_and_the_models_real_strength_range():
    """The Resolume page's example prompt is one the default model knows, and its relay maps a
    0..1 dial onto the demo model's real strength range, not 0..1."""
    import re

    from node_server.control.presets import BUILTIN_DIR
    from node_server.models.loader import DEMO_DIR

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    doc = (ROOT / "docs" / "RESOLUME.md").read_text()
    demo = __import__("json").loads((DEMO_DIR / "node_server.json").read_text())
    relay = re.search(r"```python\n(# resolume_relay.py.*?)```", doc, re.S).group(1)
    namespace: dict = {}
    # everything above the serving loop: the map and its conversions, run as written
    exec(relay.split("d = dispatcher.Dispatcher()")[0].replace("server = udp_client", "_unused = udp_client"),
         namespace)
    target, convert = namespace["MAP"]["/composition/dashboard/link1"]
    assert target == "/strength"
    assert convert(1.0) == pytest.approx(demo["max_strength"]) and 0 < convert(0.0) < demo["max_strength"]
    prompts = {tomllib.loads(p.read_text())["prompt"] for p in BUILTIN_DIR.glob("*.toml")
               if "demo model style" in tomllib.loads(p.read_text()).get("description", "")}
    sent = re.findall(r"send_message\('/prompt', '([^']+)'\)", doc)
    assert sent and all(p in prompts for p in sent)
    assert "oil painting" not in doc
