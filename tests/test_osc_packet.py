"""The OSC packet parser (`node_server.control.osc_packet`): unit cases and hypothesis properties.

Packets are built here with a small reference encoder written from the OSC 1.0 spec (every type
tag) and, for the types it supports, with python-osc's builder (a third-party encoder).
"""

from __future__ import annotations

import math
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythonosc import osc_bundle_builder, osc_message_builder

from node_server.control.osc_packet import (
    MAX_ARGS,
    MAX_ARRAY_DEPTH,
    MAX_BUNDLE_DEPTH,
    MAX_MESSAGES,
    Char,
    Message,
    Midi,
    OscParseError,
    Rgba,
    TimeTag,
    parse_packet,
    string_size,
)

# -- a reference encoder (OSC 1.0) -----------------------------------------------------------


def pad(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 4)


def ostr(text: str | bytes) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return pad(raw + b"\x00")


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def encode_arg(tag: str, value) -> bytes:
    if tag == "i":
        return i32(value)
    if tag == "h":
        return struct.pack(">q", value)
    if tag == "f":
        return struct.pack(">f", value)
    if tag == "d":
        return struct.pack(">d", value)
    if tag in "sS":
        return ostr(value)
    if tag == "b":
        return i32(len(value)) + pad(value)
    if tag == "t":
        return struct.pack(">II", value.seconds, value.fraction)
    if tag == "c":
        return struct.pack(">I", ord(value.char))
    if tag == "r":
        return struct.pack(">I", value.value)
    if tag == "m":
        return bytes(value.data)
    return b""  # T F N I [ ]


def encode_message(address: str, typed: list[tuple[str, object]]) -> bytes:
    """`typed`: (tag, value) pairs; '[' and ']' with value None open and close arrays."""
    tags = "," + "".join(t for t, _ in typed)
    return ostr(address) + ostr(tags) + b"".join(encode_arg(t, v) for t, v in typed)


def encode_bundle(*elements: bytes, timetag: int = 1) -> bytes:
    return b"#bundle\x00" + struct.pack(">Q", timetag) + b"".join(i32(len(e)) + e for e in elements)


def expected_args(typed: list[tuple[str, object]]) -> tuple:
    top: list = []
    stack = [top]
    for tag, value in typed:
        if tag == "[":
            inner: list = []
            stack[-1].append(inner)
            stack.append(inner)
        elif tag == "]":
            stack.pop()
        else:
            stack[-1].append(
                {"T": True, "F": False, "N": None, "I": math.inf}.get(tag, value) if tag in "TFNI" else value
            )
    return tuple(top)


def parse_in_thread(data: bytes, timeout: float = 10.0):
    """Parse on a helper thread: a parser that loops forever fails the test instead of hanging it."""
    result: list = []

    def run():
        try:
            result.append(("ok", parse_packet(data)))
        except Exception as e:  # noqa: BLE001 - the test inspects it
            result.append(("raised", e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert result, f"parse_packet did not return within {timeout} s"
    return result[0]


# -- strategies ------------------------------------------------------------------------------

f32 = st.floats(width=32, allow_nan=False)
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
address = text.map(lambda t: "/" + t)
scalar = st.one_of(
    st.tuples(st.just("i"), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just("h"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("f"), f32),
    st.tuples(st.just("d"), st.floats(allow_nan=False)),
    st.tuples(st.just("s"), text),
    st.tuples(st.just("S"), text),
    st.tuples(st.just("b"), st.binary(max_size=40)),
    st.tuples(st.just("t"), st.builds(TimeTag, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))),
    st.tuples(st.just("c"), st.builds(Char, st.characters(blacklist_categories=("Cs",)))),
    st.tuples(st.just("r"), st.builds(Rgba, st.integers(0, 2**32 - 1))),
    st.tuples(st.just("m"), st.builds(Midi, st.tuples(*[st.integers(0, 255)] * 4))),
    st.sampled_from([("T", True), ("F", False), ("N", None), ("I", None)]),
)
typed_args = st.recursive(
    st.lists(scalar, max_size=6),
    lambda inner: st.lists(
        st.one_of(scalar.map(lambda a: [a]), inner.map(lambda xs: [("[", None), *xs, ("]", None)])),
        max_size=4,
    ).map(lambda parts: [a for part in parts for a in part]),
    max_leaves=20,
).filter(lambda xs: _array_depth(xs) <= MAX_ARRAY_DEPTH)


def _array_depth(typed) -> int:
    depth = deepest = 0
    for tag, _ in typed:
        depth += tag == "["
        depth -= tag == "]"
        deepest = max(deepest, depth)
    return deepest


messages = st.builds(lambda a, t: (a, t), address, typed_args)


@st.composite
def packets(draw, depth: int = 0):
    """(datagram, expected messages in datagram order) for a message or a nested bundle."""
    if depth < 3 and draw(st.booleans()):
        parts = draw(st.lists(packets(depth + 1), max_size=4))
        timetag = draw(st.integers(0, 2**64 - 1))  # arbitrary: order must not depend on it
        return encode_bundle(*[p for p, _ in parts], timetag=timetag), [m for _, ms in parts for m in ms]
    addr, typed = draw(messages)
    return encode_message(addr, typed), [Message(addr, expected_args(typed))]


def same(a, b) -> bool:
    """Equality that treats -0.0 / 0.0 as different floats (bit-exact round trip)."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# -- round trips -----------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(packets())
def test_every_well_formed_packet_round_trips_in_datagram_order(packet):
    data, expected = packet
    got = parse_packet(data)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.address == e.address and same(g.args, e.args), (g, e)


python_osc_arg = st.one_of(
    st.tuples(st.just("i"), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just("h"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("f"), f32),
    st.tuples(st.just("d"), st.floats(allow_nan=False)),
    st.tuples(st.just("s"), st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=30)),
    st.tuples(st.just("b"), st.binary(min_size=1, max_size=30)),  # python-osc refuses an empty blob
    st.sampled_from([("T", True), ("F", False), ("N", None)]),
)


@settings(max_examples=200)
@given(st.lists(python_osc_arg, max_size=8), st.lists(python_osc_arg, max_size=3))
def test_what_python_osc_builds_parses_to_the_same_values(args, second):
    def build(address, typed):
        b = osc_message_builder.OscMessageBuilder(address=address)
        for tag, value in typed:
            b.add_arg(value, tag)
        return b.build()

    bundle = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
    bundle.add_content(build("/one", args))
    bundle.add_content(build("/two", second))
    got = parse_packet(bundle.build().dgram)
    assert [m.address for m in got] == ["/one", "/two"]
    assert same(got[0].args, tuple(v for _, v in args)) and same(got[1].args, tuple(v for _, v in second))


def test_a_message_without_a_type_tag_string_has_no_arguments():
    assert parse_packet(ostr("/ping")) == [Message("/ping", ())]


def test_an_empty_bundle_holds_no_messages():
    assert parse_packet(encode_bundle()) == []


def test_string_size():
    assert [string_size(s) for s in ("", "abc", "abcd", "é")] == [4, 4, 8, 4]


# -- any bytes -------------------------------------------------------------------------------

_BUNDLE_HEAD = b"#bundle\x00" + bytes(8)


@settings(max_examples=1500)
@given(st.one_of(
    st.binary(max_size=256),
    st.binary(max_size=256).map(lambda b: _BUNDLE_HEAD + b),
    st.binary(max_size=256).map(lambda b: b"/" + b),
    st.binary(max_size=64).map(lambda b: ostr("/x") + b",f\x00\x00" + b),
))
def test_any_bytes_give_messages_or_a_parse_error(data):
    kind, value = parse_in_thread(data)
    if kind == "raised":
        assert type(value) is OscParseError, repr(value)
        assert value.reason and "\n" not in value.reason
    else:
        assert all(isinstance(m, Message) and m.address.startswith("/") for m in value)
        assert len(value) <= MAX_MESSAGES


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(packets())
def test_truncation_at_every_byte_never_yields_other_messages(packet):
    """A cut packet is rejected, except where the cut leaves a complete shorter packet: a
    bundle cut between its elements (the first elements), or a message cut right after its
    address (a message without arguments, as the spec lets older senders send)."""
    data, expected = packet
    for cut in range(len(data)):
        kind, value = parse_in_thread(data[:cut])
        if kind == "raised":
            assert type(value) is OscParseError
            continue
        if data.startswith(b"#bundle"):
            assert len(value) <= len(expected)
            for g, e in zip(value, expected):
                assert g.address == e.address and same(g.args, e.args)
        else:
            assert cut == string_size(expected[0].address) and value == [Message(expected[0].address, ())]


# -- structural cases ------------------------------------------------------------------------

ISSUE_BUNDLE = bytes.fromhex("2362756e646c65000000000000000001fffffffc")  # element size -4


def test_the_issue_datagram_is_rejected_at_once():
    kind, value = parse_in_thread(ISSUE_BUNDLE)
    assert kind == "raised" and "size -4" in value.reason


@given(st.integers(-(2**31), 0), st.integers(0, 3))
def test_element_sizes_not_above_zero_are_rejected_at_any_depth(size, depth):
    inner = b"#bundle\x00" + bytes(8) + i32(size) + ostr("/a") + ostr(",")
    for _ in range(depth):
        inner = encode_bundle(inner)
    kind, value = parse_in_thread(inner)
    assert kind == "raised" and f"size {size}" in value.reason


@given(st.integers(1, 2**31 - 1).filter(lambda n: n % 4))
def test_element_sizes_not_a_multiple_of_4_are_rejected(size):
    data = _BUNDLE_HEAD + i32(size) + ostr("/a") + ostr(",")
    with pytest.raises(OscParseError, match="not a multiple of 4"):
        parse_packet(data)


@given(st.integers(12, 2**31 - 4).map(lambda n: n & ~3), st.binary(max_size=20).map(pad))
def test_element_sizes_past_the_end_are_rejected(size, tail):
    body = ostr("/a") + ostr(",") + tail
    if size <= len(body):
        size = len(body) + 4
    with pytest.raises(OscParseError, match="runs past the end"):
        parse_packet(_BUNDLE_HEAD + i32(size) + body)


def _nested(levels: int) -> bytes:
    data = encode_message("/deep", [("i", 1)])
    for _ in range(levels):
        data = encode_bundle(data)
    return data


@pytest.mark.parametrize("levels", [1, MAX_BUNDLE_DEPTH, MAX_BUNDLE_DEPTH + 1, 3000])
def test_bundle_nesting_is_bounded(levels):
    kind, value = parse_in_thread(_nested(levels))
    if levels <= MAX_BUNDLE_DEPTH:
        assert kind == "ok" and value == [Message("/deep", (1,))]
    else:
        assert kind == "raised" and type(value) is OscParseError and "nested deeper" in value.reason


def test_message_count_is_bounded():
    one = encode_message("/a", [])
    assert len(parse_packet(encode_bundle(*[one] * MAX_MESSAGES))) == MAX_MESSAGES
    with pytest.raises(OscParseError, match=f"more than {MAX_MESSAGES} messages"):
        parse_packet(encode_bundle(*[one] * (MAX_MESSAGES + 1)))


def test_argument_count_and_array_depth_are_bounded():
    assert len(parse_packet(encode_message("/a", [("T", True)] * MAX_ARGS))[0].args) == MAX_ARGS
    with pytest.raises(OscParseError, match=f"more than {MAX_ARGS} arguments"):
        parse_packet(encode_message("/a", [("T", True)] * (MAX_ARGS + 1)))
    deep = [("[", None)] * MAX_ARRAY_DEPTH + [("]", None)] * MAX_ARRAY_DEPTH
    assert parse_packet(encode_message("/a", deep))
    with pytest.raises(OscParseError, match="arrays nested deeper"):
        parse_packet(encode_message("/a", [("[", None)] + deep + [("]", None)]))
    for tags in ("[", "]", "[[]", "]["):
        with pytest.raises(OscParseError, match="without"):
            parse_packet(ostr("/a") + ostr("," + tags))


_KNOWN_TAGS = set("ifsbhdtScrmTFNI[]")


@pytest.mark.parametrize("tag", sorted(set(map(chr, range(33, 127))) - _KNOWN_TAGS))
def test_unknown_type_tags_reject_the_message(tag):
    data = ostr("/seed") + ostr(f",{tag}i") + i32(5)  # the valid 'i' after it is not applied either
    with pytest.raises(OscParseError, match="unknown type tag"):
        parse_packet(data)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty packet"),
        (b"/abc", "no terminating NUL"),
        (b"/ab\x00x\x00\x00\x00", "unknown type tag|does not start with ','"),
        (b"/a\x00x", "non-NUL bytes in its padding"),
        (b"/\xff\x00\x00", "not valid UTF-8"),
        (ostr("/a") + b"i\x00\x00\x00", "does not start with ','"),
        (ostr("/a") + ostr(",f"), "needs 4 bytes, 0 left"),
        (ostr("/a") + ostr(",h") + bytes(4), "needs 8 bytes, 4 left"),
        (ostr("/a") + ostr(",s") + b"abcd", "no terminating NUL"),
        (ostr("/a") + ostr(",b") + i32(-1), "blob at byte 8 has size -1"),
        (ostr("/a") + ostr(",b") + i32(5) + b"abcd", "runs past the end"),
        (ostr("/a") + ostr(",b") + i32(1) + b"a\x00\x01\x00", "non-NUL bytes in its padding"),
        (ostr("/a") + ostr(",c") + struct.pack(">I", 0x110000), "not a character"),
        (ostr("/a") + ostr(",i") + bytes(8), "4 bytes after the last argument"),
        (ostr("/a") + ostr(","), None),
        (b"\x00\x00\x00\x00", "neither an OSC message"),
        (b"#bundle\x00" + bytes(4), "shorter than its 16-byte header"),
        (_BUNDLE_HEAD + i32(4) + b"abcd", "bundle element at byte 20 is neither an OSC message"),
        (_BUNDLE_HEAD + i32(4) + b"\x00\x00\x00\x00", "neither an OSC message"),
        (b"/a\x00", "not a multiple of 4"),
    ],
)
def test_malformed_parts_are_named(data, reason):
    if reason is None:
        assert parse_packet(data) == [Message("/a", ())]
        return
    with pytest.raises(OscParseError, match=reason):
        parse_packet(data)


def test_the_float_without_data_bytes_from_the_issue_is_rejected():
    for address in ("/blend/2/weight", "/lllite/strength"):
        with pytest.raises(OscParseError, match="argument 'f' at byte .* needs 4 bytes, 0 left"):
            parse_packet(ostr(address) + ostr(",f"))


def test_bundle_contents_keep_datagram_order_whatever_their_time_tags():
    late = encode_bundle(encode_message("/first", []), timetag=2**63)
    early = encode_bundle(encode_message("/second", []), timetag=1)
    data = encode_bundle(late, encode_message("/third", []), early, timetag=2**40)
    assert [m.address for m in parse_packet(data)] == ["/first", "/third", "/second"]
