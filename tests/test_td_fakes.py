"""The TouchDesigner stand-in (td_fakes.py) is strict where the docs are: these are the mistakes it
must catch for the kit's tests to mean anything."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import td_fakes
from td_fakes import CallbackSignatureError, TouchDesigner, WrongThreadError

OPERATORS_JSON = Path("/work/shared/touchdesigner/operators.json")


@pytest.fixture
def td():
    t = TouchDesigner()
    yield t
    t.close()


def test_only_documented_operator_types_exist(td):
    p = td.op("/project1")
    with pytest.raises(ValueError, match="unknown operator type"):
        p.create("oscoutDATT")
    with pytest.raises(TypeError):
        p.create(dict)
    assert "syphonspoutoutTOP" in td.namespace() and "spoutoutTOP" not in td.namespace()
    assert p.create("nullTOP", "n").OPType == "nullTOP"  # the type may also be given by name


def test_unknown_parameter_names_raise_and_are_recorded_even_when_looked_up_leniently(td):
    out = td.op("/project1").create(td_fakes.oscoutDAT)
    with pytest.raises(AttributeError, match="no parameter 'netaddress'"):
        out.par.netaddress = "127.0.0.1"  # the OSC Out CHOP's name, not the DAT's
    assert getattr(out.par, "name0", None) is None
    assert ("oscoutDAT", "netaddress") in td.unknown_pars and ("oscoutDAT", "name0") in td.unknown_pars
    out.par.address = "127.0.0.1"
    assert out.par.address.eval() == "127.0.0.1"
    fit = td.op("/project1").create(td_fakes.fitTOP)
    with pytest.raises(AttributeError):
        fit.par.resolution  # a tuplet's name; the parameters are resolutionw / resolutionh
    fit.par.resolutionw = 512


def test_menus_take_only_their_documented_items(td):
    fit = td.op("/project1").create(td_fakes.fitTOP)
    with pytest.raises(ValueError, match="not one of"):
        fit.par.fit = "outside"  # the Fill Viewer menu's item, not the Fit menu's
    fit.par.fit = "fitoutside"
    fit.par.outputresolution = 9  # a menu index works too (Par Class)
    assert fit.par.outputresolution.val == "custom"


def test_constant_chop_channels_are_the_const_sequence(td):
    c = td.op("/project1").create(td_fakes.constantCHOP)
    assert c.seq.const.numBlocks == 1 and c.chans() == [("chan1", 0.0)]
    assert c.par["const1name"] is None
    with pytest.raises(AttributeError):
        c.par.name0
    c.seq.const.numBlocks = 3
    c.par.const2name, c.par.const2value = "/seed", 4
    assert c.chans() == [("chan1", 0.0), ("/seed", 4.0)]  # an empty name makes no channel
    assert c.par.const2name.sequence is c.seq.const
    with pytest.raises(ValueError):
        c.seq.const.numBlocks = 41


def test_custom_parameters_keep_value_and_default_apart(td):
    s = td.op("/project1").create(td_fakes.scriptTOP)
    page = s.appendCustomPage("Server")
    (port,) = page.appendInt("Inport", label="port")
    port.default = 5555
    assert port.val == 0  # setting the default leaves the value alone
    port.val = 5555
    assert s.par.Inport.eval() == 5555
    with pytest.raises(ValueError, match="upper-case"):
        page.appendStr("inport")
    with pytest.raises(ValueError, match="upper-case"):
        page.appendStr("InPort")
    with pytest.raises(AttributeError, match="custom"):
        s.par.resolutionw.default = 4  # built-in parameters have no settable default


def test_callbacks_are_called_with_the_documented_arguments(td):
    p = td.op("/project1")
    cb = p.create(td_fakes.textDAT, "cb")
    s = p.create(td_fakes.scriptTOP)
    s.par.callbacks = cb
    cb.text = "def onCook():\n    return\n"
    with pytest.raises(CallbackSignatureError, match="onCook"):
        s.cook(force=True)
    cb.text = "def onCook(scriptOp):\n    scriptOp.addWarning('ok')\n"
    s.cook(force=True)
    assert s.warnings() == "ok"
    with pytest.raises(RuntimeError, match="while the operator is cooking"):
        s.addWarning("outside a cook")


def test_td_objects_refuse_other_threads(td):
    out = td.op("/project1").create(td_fakes.oscoutDAT)
    caught = []

    def worker():
        try:
            out.par.port
        except WrongThreadError as e:
            caught.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert caught


def test_numpy_array_is_bottom_left_float_rgba_and_delayed_lags_one_call(td):
    src = td.op("/project1").create(td_fakes.moviefileinTOP)
    img = np.zeros((2, 3, 3), np.uint8)
    img[0, :, 0] = 255  # top row red
    src.fake_show(img)
    a = src.numpyArray()
    assert a.dtype == np.float32 and a.shape == (2, 3, 4)
    assert (a[1, :, 0] == 1.0).all() and (a[0, :, 0] == 0.0).all()  # row 0 is the bottom row
    assert src.numpyArray(delayed=True) is None  # the first delayed call has no result yet
    assert np.array_equal(src.numpyArray(delayed=True), a)
    assert src.numpyArray() is not src.numpyArray()  # a new array each call


def test_copy_numpy_array_checks_shape_dtype_and_cooking(td):
    p = td.op("/project1")
    cb = p.create(td_fakes.textDAT, "cb")
    s = p.create(td_fakes.scriptTOP)
    s.par.callbacks = cb.path
    with pytest.raises(RuntimeError, match="cooking"):
        s.copyNumpyArray(np.zeros((2, 2, 3), np.uint8))
    cb.text = "BAD = None\ndef onCook(scriptOp):\n    scriptOp.copyNumpyArray(BAD)\n"
    for bad in (np.zeros((2, 2, 3), np.float64), np.zeros((2, 2), np.uint8), np.zeros((2, 2, 5), np.uint8)):
        cb.module.BAD = bad
        with pytest.raises(ValueError):
            s.cook(force=True)
    cb.module.BAD = np.zeros((2, 3, 3), np.uint16)
    s.cook(force=True)
    assert s.fake_shown().shape == (2, 3, 3)


def test_osc_in_dat_splits_bundles_only_when_asked(td):
    from pythonosc import osc_bundle_builder, udp_client
    from pythonosc.osc_message_builder import OscMessageBuilder

    p = td.op("/project1")
    cb = p.create(td_fakes.textDAT, "cb")
    cb.text = ("got = []\n"
               "def onReceiveOSC(dat, rowIndex, message, byteData, timeStamp, address, args, peer):\n"
               "    got.append((address, list(args)))\n")
    oscin = p.create(td_fakes.oscinDAT)
    oscin.par.callbacks = cb.path
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    oscin.par.port = port
    td.run_frame()  # binds

    def bundle():
        b = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
        for addr, v in (("/status/fps", 1.5), ("/status/state", "running")):
            m = OscMessageBuilder(address=addr)
            m.add_arg(v)
            b.add_content(m.build())
        return b.build()

    client = udp_client.SimpleUDPClient("127.0.0.1", port)
    client.send(bundle())
    _wait_rows(td, oscin, 1)
    assert cb.module.got == [("#bundle", [])]  # kept whole: no message reaches the callback
    oscin.par.splitbundle = True
    client.send(bundle())
    _wait_rows(td, oscin, 3)
    assert cb.module.got[1:] == [("/status/fps", [1.5]), ("/status/state", ["running"])]


def _wait_rows(td, dat, n):
    for _ in range(200):
        td.run_frame()
        if dat.numRows >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"{dat.path}: {dat.numRows} rows")


@pytest.mark.skipif(not OPERATORS_JSON.exists(), reason="needs the workplace's operators.json "
                    "(docs.derivative.ca operator/parameter names); not in the repository")
def test_parameter_tables_match_operators_json():
    everything = json.loads(OPERATORS_JSON.read_text())
    assert set(td_fakes.OPS) <= set(everything["all_types"])
    data = everything["ops"]
    for op_type, (_, _, specs, seqs) in td_fakes.OPS.items():
        if op_type not in data:
            continue  # fitTOP, nullTOP's siblings etc. were read from their docs pages instead
        documented = set()
        for name in data[op_type]["params"]:
            documented.update(td_fakes.GROUPS.get(name, (name,)))
        modelled = set(specs) | set(seqs)
        for seq, (block, _, _) in seqs.items():
            modelled.update(f"{seq}0{suffix}" for suffix, _ in block)
        assert modelled <= documented, (op_type, sorted(modelled - documented))
