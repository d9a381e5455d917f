"""Models: synthetic builds, the tokenizer, folder round trips, loader errors, the synth-model CLI."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from node_server.errors import ModelLoadError
from node_server.models import DEFAULT_MODEL, build_synthetic, load_model
from node_server.models import tokenizer as tokmod
from node_server.models.synthetic import PAPER_TEXT_ENCODER_PARAMS, text_encoder_config


def test_tiny_builds_fast_and_small():
    build_synthetic("tiny")  # warm imports and the tokenizer cache; the timed build is the model itself
    start = time.perf_counter()
    bundle = build_synthetic("tiny", seed=1)
    elapsed = time.perf_counter() - start
    total = sum(bundle.parameter_counts().values())
    print(f"tiny build {elapsed:.2f} s, {total:,} parameters")
    assert elapsed < 20.0
    assert 100_000 < total < 20_000_000
    assert bundle.family == "dreamlite" and bundle.name == "synthetic:tiny"
    assert not any(p.requires_grad for p in bundle.unet.parameters())
    assert not bundle.text_encoder.training


def test_same_seed_same_weights_other_seed_differs(tiny_bundle):
    again = build_synthetic("tiny", seed=0)
    other = build_synthetic("tiny", seed=1)
    for name in ("text_encoder", "unet", "vae"):
        a, b, c = (getattr(x, name).state_dict() for x in (tiny_bundle, again, other))
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point()), name


def test_paper_text_encoder_has_published_parameter_count():
    from transformers import Qwen3VLForConditionalGeneration

    config = text_encoder_config("paper")
    assert config.text_config.vocab_size == 151936
    assert config.vision_config.deepstack_visual_indexes == [5, 11, 17]
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == PAPER_TEXT_ENCODER_PARAMS == 2_127_532_032


def test_paper_unet_and_vae_use_library_defaults():
    bundle = build_synthetic("paper", device="meta")
    counts = bundle.parameter_counts()
    assert 0.40e9 < counts["unet"] < 0.46e9  # the paper's 0.43B U-Net
    assert bundle.vae.config.encoder_block_out_channels == (64, 64, 64, 64) or list(
        bundle.vae.config.encoder_block_out_channels
    ) == [64, 64, 64, 64]
    assert bundle.scheduler.config.use_dynamic_shifting and bundle.scheduler.config.max_shift == 1.16


def test_special_token_ids_match_encoder_config(tiny_bundle):
    cfg, tok = tiny_bundle.text_encoder.config, tiny_bundle.tokenizer
    assert tok.convert_tokens_to_ids("<|image_pad|>") == cfg.image_token_id
    assert tok.convert_tokens_to_ids("<|video_pad|>") == cfg.video_token_id
    assert tok.convert_tokens_to_ids("<|vision_start|>") == cfg.vision_start_token_id
    assert tok.convert_tokens_to_ids("<|vision_end|>") == cfg.vision_end_token_id
    assert tok.pad_token == "<|endoftext|>"
    assert len(tok) <= cfg.text_config.vocab_size


def test_tokenizer_prefix_lengths_match_pipeline_drop_indices(tiny_bundle):
    from diffusers.pipelines.dreamlite import pipeline_dreamlite_mobile as stock

    tok = tiny_bundle.tokenizer
    source = open(stock.__file__).read()
    # Our copies of the templates are the pipeline's, and our prefix lengths are its drop indices.
    assert f"prompt_template_encode_edit_start_idx = {tokmod.EDIT_PREFIX_TOKENS}" in source
    assert f"prompt_template_encode_generate_start_idx = {tokmod.GENERATE_PREFIX_TOKENS}" in source
    edit = tok.convert_ids_to_tokens(tok(tokmod.EDIT_TEMPLATE.format("make it snowy")).input_ids)
    assert edit.index("<|vision_start|>") == tokmod.EDIT_PREFIX_TOKENS == 64
    assert edit[64:67] == ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
    gen = tok(tokmod.GENERATE_TEMPLATE.format("")).input_ids
    assert gen[tokmod.GENERATE_PREFIX_TOKENS] == tok.convert_tokens_to_ids("<|im_end|>")


def test_tokenizer_is_deterministic_and_round_trips(tmp_path, tiny_bundle, monkeypatch):
    from transformers import AutoTokenizer

    assert tokmod._train_tokenizer_json.__wrapped__() == tokmod._train_tokenizer_json()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_bundle.tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "Make it look like a watercolor, café 123 <|image_pad|><|image_pad|> ünïcode!"
    ids = tiny_bundle.tokenizer(text).input_ids
    assert loaded(text).input_ids == ids
    assert loaded.decode(ids) == text
    assert ids.count(tiny_bundle.text_encoder.config.image_token_id) == 2


def test_tiny_forward_depends_on_prompt_and_image(tiny_bundle):
    """Outputs must not be constant: the engine's tests compare prompts and images through them."""
    tok, enc = tiny_bundle.tokenizer, tiny_bundle.text_encoder
    cfg = enc.config

    def encode(prompt, pixel_values):
        text = tokmod.EDIT_TEMPLATE.replace("<|image_pad|>", "<|image_pad|>" * 4).format(prompt)
        ids = tok([text], return_tensors="pt").input_ids
        with torch.no_grad():
            out = enc(
                input_ids=ids,
                pixel_values=pixel_values,
                image_grid_thw=torch.tensor([[1, 4, 4]]),
                mm_token_type_ids=(ids == cfg.image_token_id).long(),
                output_hidden_states=True,
            )
        return out.hidden_states[-1][:, tokmod.EDIT_PREFIX_TOKENS:]

    g = torch.Generator().manual_seed(0)
    pv1, pv2 = torch.randn(16, 1536, generator=g), torch.randn(16, 1536, generator=g)
    base = encode("make it snowy", pv1)
    assert (base - encode("make it snowy", pv2)).abs().max() > 1e-4
    other_prompt = encode("turn it into a watercolor", pv1)
    assert other_prompt.shape != base.shape or (base - other_prompt).abs().max() > 1e-4

    # (cross-attention has no key positions, so a reordered sequence would give the same output)
    latents = torch.randn(1, 4, 8, 16, generator=g)
    with torch.no_grad():
        u1 = tiny_bundle.unet(latents, torch.tensor([500.0]), encoder_hidden_states=base).sample
        u2 = tiny_bundle.unet(latents, torch.tensor([500.0]), encoder_hidden_states=other_prompt).sample
        image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
        lat = tiny_bundle.vae.encode(image).latents
        dec = tiny_bundle.vae.decode(lat).sample
    assert u1.shape == latents.shape and (u1 - u2).abs().max() > 1e-4
    assert lat.shape == (1, 4, 8, 8) and dec.shape == image.shape and dec.std() > 0


def test_encoder_requires_mm_token_type_ids_with_images(tiny_bundle):
    """transformers 5 refuses images without mm_token_type_ids; the engine must always pass it."""
    tok, enc = tiny_bundle.tokenizer, tiny_bundle.text_encoder
    ids = tok(["<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>hi"], return_tensors="pt").input_ids
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        enc(input_ids=ids, pixel_values=torch.zeros(16, 1536), image_grid_thw=torch.tensor([[1, 4, 4]]))


def test_folder_round_trip_offline(tiny_model_dir, tiny_bundle, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "DreamLiteMobilePipeline"
    assert {"text_encoder", "tokenizer", "processor", "vae", "unet", "scheduler"} <= set(index)
    assert (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_model_dir / "text_encoder" / "model.safetensors").is_file()

    loaded = load_model(str(tiny_model_dir), device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "loading text_encoder (1/6)" in err and "loading scheduler (6/6)" in err
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    for name in ("text_encoder", "unet", "vae"):
        a, b = getattr(tiny_bundle, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(a) == set(b), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert loaded.image_processor["patch_size"] == 16 and loaded.image_processor["merge_size"] == 2
    assert loaded.image_processor["image_mean"] == [0.5, 0.5, 0.5]
    assert loaded.tokenizer("make it snowy").input_ids == tiny_bundle.tokenizer("make it snowy").input_ids
    assert loaded.scheduler.config.use_dynamic_shifting
    assert not loaded.unet.training and not any(p.requires_grad for p in loaded.text_encoder.parameters())


def test_load_synthetic_and_dtype():
    assert DEFAULT_MODEL == "demo"  # the embedded demo model (tests/test_demo_model.py)
    bundle = load_model("synthetic:tiny", device="cpu", dtype=torch.bfloat16, progress=False)
    assert bundle.dtype == torch.bfloat16
    assert next(bundle.text_encoder.parameters()).dtype == torch.bfloat16
    assert bundle.to("cpu", torch.float32) is bundle and bundle.dtype == torch.float32


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("synthetic:huge", "synthetic:tiny"),
        ("./no/such/model-folder", "not found"),
        ("/definitely/missing/folder", "not found"),
    ],
)
def test_bad_specs(spec, needle):
    with pytest.raises(ModelLoadError, match=needle) as info:
        load_model(spec, device="cpu", progress=False)
    assert spec in str(info.value)


def test_file_instead_of_folder(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is not a folder"):
        load_model(str(weights), device="cpu", progress=False)


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json") as info:
        load_model(str(tmp_path), device="cpu", progress=False)
    assert "text_encoder" in str(info.value)  # says which layout is expected


def test_folder_missing_component(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="missing the component subfolder.*vae"):
        load_model(str(broken), device="cpu", progress=False)


def test_folder_with_corrupt_weights_names_component(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load unet"):
        load_model(str(broken), device="cpu", progress=False)


def test_unreachable_hub_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError, match="could not fetch model 'nobody/no-such-model'.*offline"):
        load_model("nobody/no-such-model", device="cpu", progress=False)


def test_synth_model_cli(tmp_path, monkeypatch, capsys):
    from node_server import cli

    # Only this command: the CLI builds every sub-command's parser, and this test is about this one.
    monkeypatch.setattr(cli, "COMMANDS", {"synth-model": cli.COMMANDS["synth-model"]})
    target = tmp_path / "m"
    assert cli.main(["synth-model", str(target), "--size", "tiny", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert str(target) in out and "parameters" in out and "MiB" in out
    assert (target / "model_index.json").is_file()
    seed3 = build_synthetic("tiny", seed=3)
    loaded = load_model(str(target), device="cpu", progress=False)
    a, b = seed3.unet.state_dict(), loaded.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    assert cli.main(["synth-model", str(target)]) == 1  # refuses a non-empty folder
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["synth-model", str(target), "--force", "--dtype", "bfloat16"]) == 0
    assert load_model(str(target), device="cpu", dtype=torch.bfloat16, progress=False).dtype == torch.bfloat16


def test_synth_model_sizes_match_the_models():
    """synth-model writes its --size choices out (to keep torch out of the CLI parser); they must agree."""
    from node_server.commands.synth_model import SIZES
    from node_server.models import SD_SYNTHETIC_SIZES, SYNTHETIC_SIZES

    assert SIZES == SYNTHETIC_SIZES + SD_SYNTHETIC_SIZES


def test_cli_parser_does_not_import_torch():
    """Every command's parser is built before any command runs (`--help` included), so building it must
    not import torch (about 1 s): node_server/cli.py's lazy command imports; checked in a fresh interpreter."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = "import sys; from node_server.cli import build_parser; build_parser(); print(sorted(m for m in " \
           "('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_reference_pipeline_output_visibly_depends_on_prompt_and_image(tiny_bundle):
    """The stock pipeline runs on our bundle, and the tiny model is calibrated to show changes."""
    import numpy as np
    from PIL import Image

    from node_server.models.reference import build_reference_pipeline

    pipe = build_reference_pipeline(tiny_bundle)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    img1, img2 = (Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2))

    def run(prompt, image):
        out = pipe(prompt=prompt, image=image, num_inference_steps=1, height=64, width=64,
                   generator=torch.Generator().manual_seed(0), output_type="np").images[0]
        return (out * 255).round().astype(int)

    base = run("make it snowy", img1)
    assert base.shape == (64, 64, 3) and 60 < base.mean() < 200 and base.std() > 5  # grey-ish, not flat
    assert np.array_equal(base, run("make it snowy", img1))
    assert np.abs(base - run("turn it into a watercolor", img1)).max() > 10
    assert np.abs(base - run("make it snowy", img2)).max() > 10


def test_a_quiet_load_prints_nothing_and_leaves_the_libraries_progress_bars_as_they_were(capfd):
    """progress=False (tests, `render --quiet`) also silences transformers' and diffusers' own
    "Loading weights" bars during the load, and switches them back on after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from node_server.models import load_model

    capfd.readouterr()
    load_model("demo", device="cpu", progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert transformers_logging.is_progress_bar_enabled() and diffusers_logging.is_progress_bar_enabled()
    load_model("demo", device="cpu", progress=True)
    assert "loading unet" in capfd.readouterr().err  # our own progress lines
