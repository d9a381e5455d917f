"""The fixed-shape encoder forward equals transformers' own Qwen3-VL forward (tiny model, CPU, fp32)."""

from __future__ import annotations

import torch

from node_server.engine.dreamlite.encoder import PromptEncoder


def _frames(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_fixed_shape_forward_matches_stock_forward(tiny_bundle):
    enc = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64)
    for prompt, n, seed in (("oil painting", 1, 0), ("a much longer instruction about neon light", 3, 1), ("", 2, 2)):
        tokens = enc.tokenize(prompt)
        frames = _frames(n, seed)
        fast, fast_mask = enc.encode(tokens, frames)
        ref, ref_mask = enc.encode_stock(tokens, frames)
        assert fast.shape == ref.shape == (n, enc.cond_length, ref.shape[-1])
        assert torch.equal(fast_mask, ref_mask)
        err = (fast - ref).norm() / ref.norm()
        assert err < 1e-5, (prompt, n, float(err))


def test_fixed_shape_forward_sees_each_frame(tiny_bundle):
    """Per-frame rows differ when the frames differ (the image really reaches the text tokens)."""
    enc = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64)
    tokens = enc.tokenize("sketch")
    frames = _frames(2, 5)
    out, _ = enc.encode(tokens, frames)
    single, _ = enc.encode(tokens, frames[1:])
    assert (out[0] - out[1]).abs().max() > 1e-3
    assert torch.allclose(out[1], single[0], atol=1e-5)


def _prompt_in_bucket(enc, bucket: int) -> str:
    """A prompt whose tokens need exactly the bucket `bucket` (more than the bucket below it)."""
    below = max([b for b in enc.buckets if b < bucket], default=0)
    words = []
    while True:
        words.append(f"w{len(words) % 10}")
        prompt = " ".join(words)
        extra = enc.tokenize(prompt).length - enc.base_length
        if below < extra <= bucket:
            return prompt
        assert extra <= bucket, (bucket, extra)


def test_every_bucket_matches_the_stock_forward_and_runs_only_its_length(tiny_bundle):
    enc = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64,
                        max_prompt_tokens=64, buckets=(4, 16, 32))
    assert enc.buckets == (4, 16, 32, 64)
    assert 0 < enc.prefix_length <= enc.drop
    seen = []
    hook = enc.model.model.language_model.embed_tokens.register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[1]))
    try:
        enc.encode(enc.tokenize("first"), _frames(1, 9))
        assert seen[0] == enc.prefix_length  # the prefix ran once, on its own, at the first encode
        for k, bucket in enumerate(enc.buckets):
            tokens = enc.tokenize(_prompt_in_bucket(enc, bucket))
            assert tokens.run_length == enc.base_length + bucket
            frames = _frames(2, 10 + k)
            seen.clear()
            fast, fast_mask = enc.encode(tokens, frames)
            assert seen == [tokens.run_length - enc.prefix_length]  # only the tokens after the prefix
            ref, ref_mask = enc.encode_stock(tokens, frames)
            assert fast.shape == ref.shape == (2, enc.cond_length, ref.shape[-1])  # padded to the fixed length
            assert torch.equal(fast_mask, ref_mask)
            assert torch.count_nonzero(fast[:, tokens.run_length - enc.drop:]) == 0
            err = (fast - ref).norm() / ref.norm()
            assert err < 1e-5, (bucket, float(err))
    finally:
        hook.remove()


def test_prefix_cache_gives_the_stock_hidden_states_after_the_prefix(tiny_bundle):
    """The cached-prefix forward's output at positions [P, run_length) is the stock forward's
    last hidden state there (every position the engine reads, and the ones before it)."""
    from node_server.engine.dreamlite.patchify import patchify

    enc = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64)
    tokens = enc.tokenize("charcoal sketch, heavy lines")
    frames = _frames(3, 7)
    start, stop = enc.prefix_length, tokens.run_length
    ids, attn, positions, index, image_mask, _ = enc._token_inputs(tokens, start, stop)
    enc._ensure_prefix()
    assert enc.forward.prefix_length == start > 0
    n = frames.shape[0]
    with torch.no_grad():
        cached = enc.forward(enc._pixels(frames), ids.expand(n, -1), attn.expand(n, -1), positions.expand(-1, n, -1),
                             index.expand(n, -1), image_mask.expand(n, -1, -1))
        pixel_values, grid = patchify(enc.prepare_images(frames), patch_size=enc.patch,
                                      temporal_patch_size=enc.temporal, merge_size=enc.merge,
                                      image_mean=enc.mean, image_std=enc.std)
        stock = enc.model.model(
            input_ids=tokens.input_ids.expand(n, -1), attention_mask=tokens.attention_mask.expand(n, -1),
            position_ids=tokens.position_ids.expand(-1, n, -1), pixel_values=pixel_values, image_grid_thw=grid,
            mm_token_type_ids=tokens.mm_token_type_ids.expand(n, -1), use_cache=False,
        ).last_hidden_state
    assert cached.shape[1] == stop - start
    valid = tokens.length - start  # positions after the last valid token are padding either way
    want = stock[:, start:tokens.length]
    err = (cached[:, :valid] - want).norm() / want.norm()
    assert err < 1e-5, float(err)


def test_without_prefix_cache_and_with_gradients_the_full_forward_runs(tiny_bundle):
    """Training encodes with gradients: the weights change, so the cached prefix would be stale;
    the encode then runs every token (and still equals the stock forward)."""
    enc = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64)
    plain = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64, prefix_cache=False)
    assert plain.prefix_length == 0 and enc.prefix_length > 0
    tokens = enc.tokenize("watercolour")
    frames = _frames(1, 3)
    seen = []
    hook = enc.model.model.language_model.embed_tokens.register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[1]))
    try:
        with torch.enable_grad():
            graded, _ = PromptEncoder.encode.__wrapped__(enc, tokens, frames)
        assert seen == [tokens.run_length]
        seen.clear()
        off, _ = plain.encode(plain.tokenize("watercolour"), frames)
        assert seen == [tokens.run_length]
    finally:
        hook.remove()
    ref, _ = enc.encode_stock(tokens, frames)
    cached, _ = enc.encode(tokens, frames)
    for got in (graded.detach(), off, cached):
        assert (got - ref).norm() / ref.norm() < 1e-5


def test_no_buckets_runs_the_full_length(tiny_bundle):
    enc = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64, max_prompt_tokens=32,
                        buckets=None)
    assert enc.buckets == (32,)
    assert enc.tokenize("a").run_length == enc.length


def test_compiled_regions_match_eager_and_compile_once_per_shape(tiny_bundle):
    """With `compile=True` the encoder compiles one vision block and one decoder layer per
    (batch, bucket), shared by every block and layer (two graphs per shape, whatever the depth),
    and its output equals the eager forward's."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    eager = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64,
                          max_prompt_tokens=32, buckets=(16,))
    compiled = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64,
                             max_prompt_tokens=32, buckets=(16,), compile=True)
    assert compiled.shape_bound and not eager.shape_bound
    forward = compiled.forward
    assert len(forward.visual.blocks) >= 2 and len(forward.lm.layers) >= 2  # sharing is what is tested
    torch._dynamo.reset()
    counters.clear()
    frames = _frames(2, 3)
    for prompt in ("ink", "a much longer instruction about neon light and thick brush strokes"):
        tokens = compiled.tokenize(prompt)
        out, mask = compiled.encode(tokens, frames)
        ref, ref_mask = eager.encode(tokens, frames)
        assert torch.equal(mask, ref_mask)
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), float((out - ref).abs().max())
    assert tokens.run_length != compiled.tokenize("ink").run_length  # two buckets were run
    # vision block + decoder layer for the first bucket, a decoder layer for the second (the vision
    # tower's shapes depend on the batch only)
    assert counters["stats"]["unique_graphs"] == 3, dict(counters["stats"])
    compiled.encode(compiled.tokenize("ink"), frames)  # a shape seen before compiles nothing
    assert counters["stats"]["unique_graphs"] == 3
