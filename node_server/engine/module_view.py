"""An engine's own view of a model's modules: new module objects over the same weight storage.

Building an engine must not change the bundle it was given: tests share one bundle, and a server
or a benchmark may build several engines from one load. Everything an engine changes in its
modules (attention processors, ControlNet-LLLite projections spliced into the tree, a move to
another device or a cast) therefore lands on a view: a copy of the module tree whose parameters
and buffers are new tensor objects over the original storage. Untouched weights are shared, so a
large model is not held twice; a move or a cast gives the view new tensors and leaves the
original's where they were.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ..quiet import quiet_diffusers


def module_view(module: nn.Module, device: Optional[torch.device] = None,
                dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A copy of `module`'s tree sharing its weight storage, then moved/cast to `device`/`dtype`
    where they differ (the copy only). Ties between parameters (one tensor used twice) are kept."""
    memo: dict = {}
    for sub in module.modules():
        for p in sub._parameters.values():
            if p is not None and id(p) not in memo:
                memo[id(p)] = nn.Parameter(p.data, requires_grad=p.requires_grad)
        for b in sub._buffers.values():
            if b is not None and id(b) not in memo:
                memo[id(b)] = b.detach()  # a new tensor object over the same storage
    view = copy.deepcopy(module, memo)
    first = next(view.parameters(), None)
    if first is None:
        return view
    kwargs = {}
    if device is not None and first.device != torch.device(device):
        kwargs["device"] = device
    if dtype is not None and first.dtype != dtype:
        kwargs["dtype"] = dtype
    if kwargs:
        _quiet_to(view, **kwargs)
    return view


def _quiet_to(module: nn.Module, **kwargs) -> None:
    """`module.to(**kwargs)` without diffusers' warning about "modules to keep in float32", which
    it prints on every cast even when that list is empty."""
    with quiet_diffusers():
        module.to(**kwargs)
