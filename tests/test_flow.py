"""`FlowWarp` (node_server/engine/lllite/flow.py): dense optical flow + backward warp for the temporal adapter.

Translations are made exactly (no resampling of the test images): the analytic texture is
evaluated at shifted coordinates, and coffee.png is cropped at shifted offsets. The CUDA test
runs on a GPU machine only: `python -m pytest -q tests/test_flow.py`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from node_server.engine.lllite.flow import FlowWarp

DATA = Path(__file__).parent / "data"
SIZE = 256
MARGIN = 32  # interior: away from the strip that moves out of the frame


def texture(h: int, w: int, dx: float = 0.0, dy: float = 0.0, seed: int = 0) -> torch.Tensor:
    """[1,3,h,w] in [0,1]: T(x + dx, y + dy) for an analytic texture T (sinusoids and soft discs).

    So texture(..., dx, dy)(p) == texture(...)(p + (dx, dy)): flow (dx, dy), exactly, sub-pixel too.
    """
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    ys, xs = torch.meshgrid(torch.arange(h, dtype=f64) + dy, torch.arange(w, dtype=f64) + dx, indexing="ij")
    img = torch.zeros(3, h, w, dtype=f64)
    for _ in range(24):
        fx, fy = (torch.rand(2, generator=g, dtype=f64) * 0.25 - 0.125) * math.pi
        phase = torch.rand(1, generator=g, dtype=f64) * 2 * math.pi
        colour = torch.rand(3, 1, 1, generator=g, dtype=f64)
        img += colour * torch.sin(xs * fx + ys * fy + phase)
    for _ in range(12):
        cx, cy = torch.rand(2, generator=g, dtype=f64) * torch.tensor([w, h], dtype=f64)
        radius = 8 + torch.rand(1, generator=g, dtype=f64) * 24
        colour = torch.rand(3, 1, 1, generator=g, dtype=f64) * 2 - 1
        dist = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt()
        img += 3 * colour * torch.sigmoid((radius - dist) * 1.5)
    # Fixed normalisation (independent of the shift), so shifted copies stay exact.
    return ((img + 12) / 24).clamp(0, 1).unsqueeze(0).float()


def coffee_pair(dx: int, dy: int, size: int = 224, offset: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(cur, prev) crops of coffee.png with cur(p) == prev(p + (dx, dy)) (integer shift)."""
    arr = np.array(Image.open(DATA / "coffee.png").convert("RGB"))
    img = torch.from_numpy(arr).permute(2, 0, 1).float().div(255).unsqueeze(0)
    prev = img[..., offset : offset + size, offset : offset + size]
    cur = img[..., offset + dy : offset + dy + size, offset + dx : offset + dx + size]
    return cur.contiguous(), prev.contiguous()


def interior(x: torch.Tensor) -> torch.Tensor:
    return x[..., MARGIN:-MARGIN, MARGIN:-MARGIN]


def check_translation(fw: FlowWarp, cur: torch.Tensor, prev: torch.Tensor, truth: tuple[float, float]) -> None:
    flow = fw.flow(cur, prev)
    assert flow.shape == (cur.shape[0], 2, *cur.shape[-2:])
    median = interior(flow).flatten(2).median(dim=-1).values.cpu()  # [n, 2]
    expected = torch.tensor(truth, dtype=torch.float32).expand_as(median)
    assert (median - expected).abs().max() < 0.5, f"median flow {median.tolist()}, truth {truth}"
    before = (cur - prev).abs().mean()
    after = (cur - fw.warp(prev, flow)).abs().mean()
    assert after * 3 <= before, f"mean abs error {before:.4f} unwarped, {after:.4f} warped"


@pytest.fixture(scope="module")
def fw() -> FlowWarp:
    return FlowWarp((SIZE, SIZE))


@pytest.mark.parametrize("truth", [(3.0, -2.0), (-6.0, 4.0), (1.5, -0.5)])
def test_translation_recovered_on_texture(fw, truth):
    cur = texture(SIZE, SIZE, *truth)
    prev = texture(SIZE, SIZE)
    check_translation(fw, cur, prev, truth)


def test_translation_recovered_on_photo():
    cur, prev = coffee_pair(3, -2)
    check_translation(FlowWarp(cur.shape[-2:]), cur, prev, (3.0, -2.0))


def test_brightness_change_is_not_motion(fw):
    """An exposure change between the frames (a light, auto-exposure) leaves the flow right."""
    truth = (3.0, -2.0)
    cur = texture(SIZE, SIZE, *truth)
    prev = texture(SIZE, SIZE)
    brighter = cur + 0.1  # texture() stays below 0.9, so no clipping
    assert brighter.max() <= 1
    flow = fw.flow(brighter, prev)
    median = interior(flow).flatten(2).median(dim=-1).values[0]
    assert (median - torch.tensor(truth)).abs().max() < 0.5, median.tolist()
    # The warped previous frame matches the (unbrightened) current frame.
    assert (cur - fw.warp(prev, flow)).abs().mean() * 3 <= (cur - prev).abs().mean()


def test_warp_convention_integer_shift(fw):
    """warp(img, constant (dx, dy)) == img shifted so that out(p) = img(p + (dx, dy)), exactly."""
    img = texture(SIZE, SIZE)
    flow = torch.empty(1, 2, SIZE, SIZE)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    out = fw.warp(img, flow)
    # out[y, x] = img[y - 1, x + 2] away from the borders.
    torch.testing.assert_close(out[..., 1:, :-2], img[..., :-1, 2:], atol=1e-5, rtol=0)
    # Border padding: the last two columns repeat img's last column (shifted by one row).
    torch.testing.assert_close(out[..., 1:, -1], img[..., :-1, -1], atol=1e-5, rtol=0)


def test_identical_frames_give_zero_flow(fw):
    img = texture(SIZE, SIZE, seed=3)
    flow = fw.flow(img, img)
    assert flow.abs().max() < 0.05


@pytest.mark.parametrize("values", [(0.5, 0.5), (0.3, 0.7), (0.0, 0.0), (1.0, 1.0)])
def test_flat_frames_give_finite_zero_flow(fw, values):
    cur = torch.full((2, 3, SIZE, SIZE), values[0])
    prev = torch.full((1, 3, SIZE, SIZE), values[1])
    flow = fw.flow(cur, prev)
    assert torch.isfinite(flow).all()
    assert flow.abs().max() < 1e-3
    out = fw(cur, prev, prev)
    assert torch.isfinite(out).all()


def test_forward_broadcasts_batch_one_prev(fw):
    shifts = [(3.0, -2.0), (0.0, 0.0), (-4.0, 1.0)]
    cur = torch.cat([texture(SIZE, SIZE, dx, dy) for dx, dy in shifts])
    prev = texture(SIZE, SIZE)
    prev_out = torch.rand(1, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    out = fw(cur, prev, prev_out)
    assert out.shape == (3, 4, SIZE, SIZE)
    for i in range(3):
        single = fw(cur[i : i + 1], prev, prev_out)
        torch.testing.assert_close(out[i : i + 1], single, atol=1e-4, rtol=0)
    # The items really differ (each got its own flow).
    assert (out[0] - out[2]).abs().mean() > 0.05
    # Broadcasting equals passing the repeated batch.
    torch.testing.assert_close(out, fw(cur, prev.expand(3, -1, -1, -1), prev_out.repeat(3, 1, 1, 1)), atol=1e-5, rtol=0)


def test_no_graph_breaks():
    torch._dynamo.reset()
    fw = FlowWarp((128, 128), levels=2)
    cur = texture(128, 128, 2.0, 1.0)
    prev = texture(128, 128)
    explanation = torch._dynamo.explain(fw)(cur.expand(2, -1, -1, -1), prev, prev)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


def test_shapes_dtypes_and_determinism(fw):
    cur = torch.cat([texture(SIZE, SIZE, 2.0, 1.0), texture(SIZE, SIZE, -1.0, 0.5)]).double()
    prev = texture(SIZE, SIZE).double()
    prev_out = texture(SIZE, SIZE, seed=5).to(torch.bfloat16)

    flow = fw.flow(cur, prev)
    assert flow.shape == (2, 2, SIZE, SIZE) and flow.dtype == torch.float32
    out = fw(cur, prev, prev_out)
    assert out.shape == (2, 3, SIZE, SIZE) and out.dtype == torch.bfloat16
    assert fw.warp(prev_out.float(), flow).dtype == torch.float32

    # Same inputs, same outputs, bit for bit; a second instance (no hidden state) agrees too.
    assert torch.equal(fw.flow(cur, prev), flow)
    assert torch.equal(fw(cur, prev, prev_out), out)
    assert torch.equal(FlowWarp((SIZE, SIZE))(cur, prev, prev_out), out)
    # The input dtype only changes rounding: float64 and float32 inputs agree closely.
    torch.testing.assert_close(fw.flow(cur.float(), prev.float()), flow, atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "size, kwargs",
    [((256, 256), {"window": 6}), ((250, 256), {"scale": 4}), ((64, 64), {"scale": 4, "levels": 3}), ((256, 256), {"iters": 0})],
)
def test_bad_configuration_is_refused(size, kwargs):
    with pytest.raises(ValueError):
        FlowWarp(size, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_compiled_and_graph_captured():
    device = torch.device("cuda")
    size = 512
    torch._dynamo.reset()
    fw = FlowWarp((size, size)).to(device)
    compiled = torch.compile(fw, fullgraph=True, dynamic=False)

    truth = [(3.0, -2.0), (-6.0, 4.0)]
    cur = torch.cat([texture(size, size, dx, dy) for dx, dy in truth]).to(device)
    prev = texture(size, size).to(device)
    prev_out = texture(size, size, seed=7).to(device, torch.float16)

    out = compiled(cur, prev, prev_out)
    eager = fw(cur, prev, prev_out)
    assert out.dtype == torch.float16 and out.shape == (2, 3, size, size)
    torch.testing.assert_close(out.float(), eager.float(), atol=2e-2, rtol=0)
    for i, t in enumerate(truth):
        check_translation(fw, cur[i : i + 1], prev, t)

    # The compiled flow inside a CUDA graph capture, replayed on new inputs.
    flow_fn = torch.compile(fw.flow, fullgraph=True, dynamic=False)
    static_cur, static_prev = cur.clone(), prev.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            flow_fn(static_cur, static_prev)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_flow = flow_fn(static_cur, static_prev)
    static_cur.copy_(cur.flip(0))  # new contents, same buffers
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_flow, fw.flow(cur.flip(0), prev), atol=1e-2, rtol=0)
    median = interior(static_flow).flatten(2).median(dim=-1).values.cpu()
    assert (median - torch.tensor(truth[::-1])).abs().max() < 0.5
    torch._dynamo.reset()
