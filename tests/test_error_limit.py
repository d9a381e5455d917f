"""`/error` forwarding limits (node_server/server/error_limit.py): per second and per source, so a
flood of bad frames cannot hide a failure of the server itself."""

from __future__ import annotations

from node_server.server.error_limit import INPUT, SERVER, ErrorRateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.2

    def __call__(self) -> float:
        return self.now


def test_each_second_forwards_at_most_its_allowance_per_source():
    clock = Clock()
    limit = ErrorRateLimit(3, clock=clock)
    assert [limit.allow(INPUT) for _ in range(5)] == [True, True, True, False, False]
    assert limit.allow(SERVER)  # a flood of bad inputs does not use up the server's allowance
    clock.now = 100.9
    assert not limit.allow(INPUT)  # still the same second
    clock.now = 101.0
    assert [limit.allow(INPUT) for _ in range(4)] == [True, True, True, False]
    assert [limit.allow(SERVER) for _ in range(4)] == [True, True, True, False]
