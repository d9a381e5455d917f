"""The one frame-size parser (`serve --size`, `render --size`, `size` in a config file): property
tests over every legal size and arbitrary text, numbers and TOML values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_server.errors import NodeServerError, ParamError
from node_server.frame_size import parse_size, size_text
from node_server.server.config import _check

sides = st.integers(1, 128).map(lambda k: 32 * k)


@settings(deadline=None)  # a loaded CI machine must not fail a correct parser on time
@given(sides, sides)
def test_every_legal_wxh_parses_to_height_width_and_back(w, h):
    assert parse_size(f"{w}x{h}") == (h, w)
    assert parse_size(f" {w} X {h} ") == (h, w)
    assert parse_size(size_text((h, w))) == (h, w)
    assert _check("size", f"{w}x{h}", "test") == (h if h == w else (h, w))
    assert parse_size(w) == (w, w) and _check("size", w, "test") == w


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                 st.booleans(), st.none(), st.lists(st.integers(), max_size=3)))
def test_any_other_value_is_a_one_line_size_error_never_a_crash(value):
    try:
        h, w = parse_size(value)
    except ParamError as exc:
        assert exc.name == "size" and "\n" not in str(exc)
    else:
        assert 32 <= h <= 4096 and 32 <= w <= 4096 and h % 32 == 0 and w % 32 == 0
    try:
        _check("size", value, "config file x.toml")
    except NodeServerError as exc:
        assert str(exc).startswith("config file x.toml: size ") and "\n" not in str(exc)


@pytest.mark.parametrize("text, reason", [("0", "width must be a multiple of 32"),
                                          ("64x100", "height must be a multiple of 32"),
                                          ("8192x64", "in 32..4096"),
                                          ("1234567890x64", "expected 512 or WxH"),
                                          ("-64x64", "expected 512 or WxH"), ("64x64x64", "expected 512 or WxH")])
def test_bad_sizes_say_why(text, reason):
    with pytest.raises(ParamError, match=reason):
        parse_size(text)
