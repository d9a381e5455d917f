"""Third-party console noise held down where it only repeats itself.

diffusers logs a warning on calls this project makes on purpose and often: every cast of a model
("modules to keep in float32", even when that list is empty) and every scheduler built from
another scheduler class's config (its keys). `quiet_diffusers()` raises its logger to errors for
the length of such a call and restores the level the user had.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def quiet_diffusers():
    """diffusers' logger at error level inside the block, its previous level after it."""
    from diffusers.utils import logging as diffusers_logging

    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(previous)
