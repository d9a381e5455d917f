"""`quiet_diffusers`: diffusers' logger at error level inside the block, the user's level after."""

from __future__ import annotations

import pytest
from diffusers.utils import logging as diffusers_logging

from node_server.quiet import quiet_diffusers


def test_quiet_diffusers_mutes_and_restores_even_on_error():
    before = diffusers_logging.get_verbosity()
    try:
        diffusers_logging.set_verbosity_info()
        with quiet_diffusers():
            assert diffusers_logging.get_verbosity() == diffusers_logging.ERROR
        assert diffusers_logging.get_verbosity() == diffusers_logging.INFO
        with pytest.raises(RuntimeError), quiet_diffusers():
            raise RuntimeError("inside")
        assert diffusers_logging.get_verbosity() == diffusers_logging.INFO
    finally:
        diffusers_logging.set_verbosity(before)


def test_a_cast_through_the_engine_view_logs_no_diffusers_warning(tiny_bundle):
    """What it serves: diffusers logs "modules ... that should be kept in float32" on every cast
    of its models; the engine's own view (`module_view`) casts without it. The plain cast beside it
    shows the warning is there to be held down."""
    import copy
    import logging

    import torch

    from node_server.engine.module_view import module_view

    class Record(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    record = Record()
    library = logging.getLogger("diffusers")
    library.addHandler(record)
    try:
        view = module_view(tiny_bundle.vae, torch.device("cpu"), torch.bfloat16)
        assert next(view.parameters()).dtype == torch.bfloat16
        assert not [m for m in record.messages if "kept in float32" in m]
        copy.deepcopy(tiny_bundle.vae).to(dtype=torch.bfloat16)
        assert [m for m in record.messages if "kept in float32" in m]
    finally:
        library.removeHandler(record)
