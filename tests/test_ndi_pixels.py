"""NDI pixel formats, frame metadata and source names: the parts of the NDI bridge that parse what
comes off the network, checked without NDI (property tests with structural cases)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bridges.ndi import pixels
from bridges.ndi.metadata import NDI_TIMESTAMP_UNDEFINED, format_output, frame_t, parse_t, timestamp_seconds
from bridges.ndi.sender import RateMeter, check_name
from bridges.ndi.sources import SourceQuery, stream_name

# BT.709, video range: the exact formulas the integer code approximates.
KR, KB = 0.2126, 0.0722
KG = 1 - KR - KB


def ref_yuv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float64) / 255 for i in range(3))
    y = KR * r + KG * g + KB * b
    return np.stack([16 + 219 * y, 128 + 224 * (b - y) / (2 * (1 - KB)), 128 + 224 * (r - y) / (2 * (1 - KR))], -1)


def ref_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    yy = (y.astype(np.float64) - 16) / 219
    pb = (cb.astype(np.float64) - 128) / 224
    pr = (cr.astype(np.float64) - 128) / 224
    r = yy + 2 * (1 - KR) * pr
    b = yy + 2 * (1 - KB) * pb
    g = (yy - KR * r - KB * b) / KG
    return np.clip(np.stack([r, g, b], -1) * 255, 0, 255)


def test_fourcc_codes_are_the_sdks():
    # NDI_LIB_FOURCC('U','Y','V','Y') and ('B','G','R','X'): the values the runtime reports
    assert pixels.UYVY == 0x59565955 == 1498831189
    assert pixels.BGRX == 0x58524742 == 1481787202
    assert pixels.describe(pixels.BGRA) == "BGRA"
    assert pixels.describe(pixels.fourcc("NV12")) == "NV12"
    assert pixels.describe(0x01020304).startswith("FourCC 0x")


@settings(max_examples=60, deadline=None, database=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9), st.just(3))))
def test_rgb_to_uyvy_matches_the_bt709_formula(rgb):
    rgb = np.repeat(rgb, 2, axis=1)  # pixel pairs of one colour: chroma is then exact, not averaged
    uyvy = pixels.rgb_to_uyvy(rgb)
    ref = ref_yuv(rgb)
    assert np.abs(uyvy[:, :, 1] - ref[..., 0]).max() <= 1
    assert np.abs(uyvy[:, 0::2, 0] - ref[:, 0::2, 1]).max() <= 1
    assert np.abs(uyvy[:, 1::2, 0] - ref[:, 1::2, 2]).max() <= 1
    assert 16 <= uyvy[:, :, 1].min() and uyvy[:, :, 1].max() <= 235


@settings(max_examples=60, deadline=None, database=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9).map(lambda n: 2 * n), st.just(2))))
def test_uyvy_to_rgb_matches_the_bt709_formula_on_any_bytes(uyvy):
    rgb = pixels.uyvy_to_rgb(uyvy)
    h, w = uyvy.shape[:2]
    cb = np.repeat(uyvy[:, 0::2, 0], 2, axis=1)
    cr = np.repeat(uyvy[:, 1::2, 0], 2, axis=1)
    ref = ref_rgb(uyvy[:, :, 1], cb, cr)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb - ref).max() <= 1.01  # out-of-gamut bytes clip like the formula


@settings(max_examples=60, deadline=None, database=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8), st.just(3))))
def test_uyvy_round_trip_keeps_colours(rgb):
    rgb = np.repeat(rgb, 2, axis=1)
    back = pixels.uyvy_to_rgb(pixels.rgb_to_uyvy(rgb))
    # video range quantises 256 levels into 220 (Y) and 225 (Cb, Cr): a few levels of error
    assert np.abs(back.astype(int) - rgb).max() <= 4


@pytest.mark.parametrize("code, order", [(pixels.BGRX, (2, 1, 0)), (pixels.BGRA, (2, 1, 0)),
                                         (pixels.RGBX, (0, 1, 2)), (pixels.RGBA, (0, 1, 2))])
def test_four_byte_formats_to_rgb(code, order):
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    np.testing.assert_array_equal(pixels.to_rgb(px, code), px[:, :, list(order)])


def test_bgrx_out_is_opaque_and_reversible():
    rgb = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    bgrx = pixels.rgb_to_bgrx(rgb)
    assert (bgrx[:, :, 3] == 255).all()
    np.testing.assert_array_equal(pixels.to_rgb(bgrx, pixels.BGRX), rgb)


def test_frame_view_cuts_a_padded_stride():
    # ndi-python hands (h, w, stride // w): with 8 bytes of padding on a 4-pixel BGRX row, 6 bytes a "pixel"
    h, w, stride = 3, 4, 24
    raw = np.arange(h * stride, dtype=np.uint8).reshape(h, w, stride // w)
    view = pixels.frame_view(raw, pixels.BGRX, w, h)
    assert view.shape == (h, w, 4)
    np.testing.assert_array_equal(view.reshape(h, -1), raw.reshape(h, -1)[:, :16])


@pytest.mark.parametrize("code, w, h, shape, match", [
    (pixels.fourcc("NV12"), 4, 4, (4, 4, 2), "not supported"),
    (pixels.BGRX, 0, 4, (4, 1, 4), "out of range"),
    (pixels.BGRX, -4, 4, (4, 1, 4), "out of range"),
    (pixels.BGRX, 4, 1 << 40, (4, 4, 4), "out of range"),
    (pixels.UYVY, 3, 2, (2, 3, 2), "odd"),
    (pixels.BGRX, 4, 4, (4, 3, 4), "does not hold"),  # truncated rows
    (pixels.BGRX, 4, 3, (4, 4, 4), "does not hold"),  # rows that do not divide the buffer
])
def test_frame_view_refuses_bad_frames(code, w, h, shape, match):
    with pytest.raises(pixels.PixelFormatError, match=match):
        pixels.frame_view(np.zeros(shape, np.uint8), code, w, h)


def test_frame_view_refuses_non_bytes():
    with pytest.raises(pixels.PixelFormatError, match="uint8"):
        pixels.frame_view(np.zeros((2, 2, 4), np.float32), pixels.BGRX, 2, 2)


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from(list(pixels.BYTES_PER_PIXEL) + [0, pixels.fourcc("P216"), -1]),
       st.integers(-3, 70), st.integers(-3, 70), st.integers(0, 600))
def test_frame_view_never_raises_anything_else(code, w, h, size):
    data = np.zeros(size, np.uint8)
    try:
        view = pixels.frame_view(data, code, w, h)
    except pixels.PixelFormatError:
        return
    rgb = pixels.to_rgb(view, code)
    assert rgb.shape == (h, w, 3)


# -- metadata ----------------------------------------------------------------------------------
def test_t_from_metadata_and_timestamp():
    assert parse_t('<node_server t="12.5"/>') == 12.5
    assert parse_t("<ndi_x/><node_server id='3' t='1e3' />") == 1000.0
    assert frame_t('<node_server t="2"/>', 10**16) == 2.0
    assert frame_t("", 17_963_962_320_008_285) == pytest.approx(1_796_396_232.0008285)
    assert frame_t(None, NDI_TIMESTAMP_UNDEFINED) is None
    assert timestamp_seconds(0) is None and timestamp_seconds("x") is None
    for bad in ('<node_server t="nan"/>', '<node_server t="inf"/>', '<node_server t="1,5"/>', "<node_server/>",
                '<node_servers t="1"/>', 't="1"', "<node_server t=1/>", "x" * 5000 + '<node_server t="1"/>'):
        assert parse_t(bad) is None, bad


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.text(max_size=300), st.builds(lambda a, b: f"<node_server {a}t=\"{b}\"/>", st.text(max_size=40),
                                                  st.text(max_size=40)), st.none(), st.integers(), st.binary()))
def test_parse_t_never_raises(text):
    value = parse_t(text)
    assert value is None or np.isfinite(value)


def test_output_metadata_round_trips_t():
    text = format_output({"id": 562949953421312, "t": 1796396232.0500188, "server": {"latency_ms": 3.25}})
    assert text == '<node_server id="562949953421312" t="1796396232.0500188" latency_ms="3.250"/>'
    assert parse_t(text) == 1796396232.0500188
    assert format_output({"id": 1, "t": float("nan"), "server": None}) == '<node_server id="1"/>'


# -- names ------------------------------------------------------------------------------------
SOURCES = [("STUDIO (TouchDesigner)", "10.0.0.2:5961"), ("VJ-PC (Arena - Composition)", "10.0.0.3:5961"),
           ("TouchDesigner", "10.0.0.9:5963"), ("LAPTOP (TD (main))", "10.0.0.4:5961")]


def test_source_query_exact_stream_and_contains():
    assert stream_name("STUDIO (TouchDesigner)") == "TouchDesigner"
    assert stream_name("LAPTOP (TD (main))") == "TD (main)"
    assert stream_name("plain") == "plain"
    assert SourceQuery("VJ-PC (Arena - Composition)").pick(SOURCES) == SOURCES[1]
    assert SourceQuery("Arena - Composition").pick(SOURCES) == SOURCES[1]
    assert SourceQuery("TouchDesigner").pick(SOURCES) == SOURCES[2]  # a full-name match wins
    assert SourceQuery("TD (main)").pick(SOURCES) == SOURCES[3]
    assert SourceQuery("Arena").pick(SOURCES) is None  # exact means exact
    assert SourceQuery("~arena").pick(SOURCES) == SOURCES[1]  # ~ : contains, any case
    assert SourceQuery("~").pick(SOURCES) == SOURCES[0]
    assert SourceQuery("~nothing").pick(SOURCES) is None
    assert SourceQuery("~Arena").describe() == 'first source containing "Arena"'


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=20), st.lists(st.tuples(st.text(max_size=30), st.text(max_size=10)), max_size=6))
def test_source_query_picks_only_listed_sources(text, sources):
    pick = SourceQuery(text).pick(sources)
    assert pick is None or pick in sources


def test_sender_names_and_rate_meter():
    assert check_name("node-server") == "node-server"
    for bad in ("", "a\0b", "n" * 256):
        with pytest.raises(ValueError):
            check_name(bad)
    meter = RateMeter(default=30.0)
    assert meter.rate() == (30000, 1000)
    for k in range(50):
        meter.add(k / 12.0)  # 12 fps
    assert meter.rate() == (12000, 1000)
    meter.add(50 / 12.0 + 1 / 12.5)  # within the band: the announced rate stays
    assert meter.rate() == (12000, 1000)
