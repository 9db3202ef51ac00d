"""Built-in tiny pipelines: offline build, cache reuse, atomic publish, determinism, tokenizer."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file
from transformers import CLIPTokenizer

import engine.builtin as builtin
from engine.builtin import BUILTIN_PREFIX, builtin_names, is_builtin, resolve_builtin
from engine.builtin.tiny import build_tiny_sd, build_tokenizer

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTOR_STUDIO_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_names_and_prefix():
    assert BUILTIN_PREFIX == "builtin:"
    assert builtin_names()[:4] == ["builtin:toy", "builtin:toy-dit", "builtin:tiny-sd", "builtin:tiny-sdxl"]
    assert is_builtin("builtin:tiny-sd") and is_builtin("builtin:typo")
    assert not is_builtin("runwayml/stable-diffusion-v1-5") and not is_builtin("/models/tiny-sd")


@pytest.mark.parametrize("name", ["builtin:nope", "tiny-sd", "builtin:"])
def test_unknown_name_lists_valid_names(cache, name):
    with pytest.raises(ValueError) as err:
        resolve_builtin(name)
    for valid in builtin_names():
        assert valid in str(err.value)


@pytest.mark.parametrize(
    "name, pipeline_cls",
    [("builtin:tiny-sd", StableDiffusionPipeline), ("builtin:tiny-sdxl", StableDiffusionXLPipeline)],
)
def test_builtin_reloads_offline_and_generates(cache, name, pipeline_cls):
    path = resolve_builtin(name)
    assert path == cache / "builtin" / name.removeprefix(BUILTIN_PREFIX)
    pipe = pipeline_cls.from_pretrained(path, local_files_only=True)
    assert type(pipe.tokenizer) is CLIPTokenizer and pipe.tokenizer.model_max_length == 77
    out = pipe(
        "a photo", num_inference_steps=2, height=64, width=64,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3)
    assert np.isfinite(out).all() and out.std() > 0
    # LoRA targets exist on both sides of the UNet, and the VAE downsamples 8x like the real one.
    names = [n for n, _ in pipe.unet.named_modules()]
    for side in ("down_blocks", "up_blocks"):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            assert any(n.startswith(side) and n.endswith(proj) for n in names), (side, proj)
    assert pipe.vae_scale_factor == 8
    assert not list(path.parent.glob(".*"))  # no temp folders left behind


def test_second_resolve_reuses_cached_folder(cache, monkeypatch):
    calls = []
    monkeypatch.setitem(builtin.BUILTINS, "tiny-sd", lambda p: (calls.append(p), build_tiny_sd(p)))
    first = resolve_builtin("builtin:tiny-sd")
    stamp = (first / UNET_WEIGHTS).stat().st_mtime_ns
    second = resolve_builtin("builtin:tiny-sd")
    assert second == first and len(calls) == 1
    assert (second / UNET_WEIGHTS).stat().st_mtime_ns == stamp


def test_build_is_deterministic(tmp_path):
    torch.manual_seed(1)  # whatever state the caller's RNG is in, the weights are the same
    build_tiny_sd(tmp_path / "a")
    torch.manual_seed(2)
    build_tiny_sd(tmp_path / "b")
    a, b = load_file(tmp_path / "a" / UNET_WEIGHTS), load_file(tmp_path / "b" / UNET_WEIGHTS)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_build_leaves_caller_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_sd(tmp_path / "x")
    assert torch.equal(torch.rand(3), expected)


def test_losing_a_build_race_uses_the_winners_folder(cache, monkeypatch):
    final = cache / "builtin" / "tiny-sd"

    def builder_that_gets_beaten(path):
        (path / "model_index.json").write_text('{"who": "loser"}')
        final.mkdir()  # another process publishes first, while we are still building
        (final / "model_index.json").write_text('{"who": "winner"}')
        (final / ".recipe").write_text(builtin._stamp("tiny-sd"))

    monkeypatch.setitem(builtin.BUILTINS, "tiny-sd", builder_that_gets_beaten)
    assert resolve_builtin("builtin:tiny-sd") == final
    assert json.loads((final / "model_index.json").read_text()) == {"who": "winner"}
    assert [p.name for p in final.parent.iterdir()] == ["tiny-sd"]  # our temp folder is gone


def test_concurrent_resolves_all_get_a_valid_folder(cache, monkeypatch):
    barrier = threading.Barrier(4)

    def slow_builder(path):
        barrier.wait(timeout=10)  # all four are mid-build at once
        (path / "model_index.json").write_text("{}")

    monkeypatch.setitem(builtin.BUILTINS, "tiny-sd", slow_builder)
    results, errors = [], []

    def worker():
        try:
            results.append(resolve_builtin("builtin:tiny-sd"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4 and len(set(results)) == 1
    assert (results[0] / "model_index.json").is_file()
    assert [p.name for p in results[0].parent.iterdir()] == ["tiny-sd"]


def test_folder_without_marker_is_rebuilt(cache):
    broken = cache / "builtin" / "tiny-sd"
    broken.mkdir(parents=True)
    (broken / "half-written.bin").write_bytes(b"x")
    path = resolve_builtin("builtin:tiny-sd")
    assert (path / "model_index.json").is_file() and not (path / "half-written.bin").exists()


def test_tokenizer_pads_and_round_trips(tok):
    ids = tok("a red circle", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True).split() == ["a", "red", "circle"]
    # Built-in words are single tokens, so ordinary prompts stay short; anything else falls back to bytes.
    assert len(tok("a photo of sks toy on a white background").input_ids) == 2 + 9
    assert tok.decode(tok("Zebra 42!").input_ids, skip_special_tokens=True).replace(" ", "") == "zebra42!"
    assert len(tok) == tok.eos_token_id + 1 and tok.pad_token == "<|endoftext|>"
    assert 500 < len(tok) < 1500


def test_tokenizer_survives_save_and_reload(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert type(again) is CLIPTokenizer and again.model_max_length == 77
    assert again("a blue square").input_ids == tok("a blue square").input_ids
    assert build_tokenizer(pad_token="!").pad_token_id == tok.convert_tokens_to_ids("!")


def test_sdxl_config(cache):
    path = resolve_builtin("builtin:tiny-sdxl")
    unet = json.loads((path / "unet" / "config.json").read_text())
    assert unet["addition_embed_type"] == "text_time"
    assert unet["addition_time_embed_dim"] == 8
    assert unet["cross_attention_dim"] == 32 + 32
    assert unet["projection_class_embeddings_input_dim"] == 6 * 8 + 32
    enc2 = json.loads((path / "text_encoder_2" / "config.json").read_text())
    assert enc2["architectures"] == ["CLIPTextModelWithProjection"] and enc2["projection_dim"] == 32
    tok2 = json.loads((path / "tokenizer_2" / "tokenizer_config.json").read_text())
    assert tok2["pad_token"] == "!" and tok2["model_max_length"] == 77


def test_a_changed_recipe_rebuilds_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTOR_STUDIO_CACHE", str(tmp_path))
    from engine import builtin
    calls = []
    monkeypatch.setitem(builtin.BUILTINS, "tiny-sd", lambda p: (calls.append(p), build_tiny_sd(p)))
    resolve_builtin("builtin:tiny-sd")
    resolve_builtin("builtin:tiny-sd")
    assert len(calls) == 1
    monkeypatch.setitem(builtin.RECIPE_VERSIONS, "tiny-sd", 99)
    path = resolve_builtin("builtin:tiny-sd")
    assert len(calls) == 2 and (path / ".recipe").read_text().endswith("v99")


def test_a_missing_shipped_builtin_says_how_to_get_it_back(monkeypatch, tmp_path):
    import engine.builtin as builtin

    monkeypatch.setitem(builtin.SHIPPED, "toy", tmp_path / "not-here")
    with pytest.raises(ValueError, match="missing from this checkout.*python -m engine.builtin.toy build"):
        resolve_builtin("builtin:toy")


def test_qwen_tokenizer_makes_the_template_the_tokens_the_pipeline_drops(tmp_path):
    """QwenImagePipeline drops its template's first 34 tokens (Qwen's tokenizer spells it so); the tiny tokenizer
    must too, or the tiny model's embeddings would keep template tokens or lose prompt ones."""
    from diffusers import QwenImagePipeline
    from transformers import Qwen2Tokenizer

    from engine.builtin.tiny_dit import QWEN_TEMPLATE, build_qwen_tokenizer

    pipe = QwenImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=None)
    assert pipe.prompt_template_encode == QWEN_TEMPLATE
    build_qwen_tokenizer().save_pretrained(tmp_path)
    tok = Qwen2Tokenizer.from_pretrained(tmp_path)
    prefix = QWEN_TEMPLATE.split("{}")[0]
    assert len(tok(prefix).input_ids) == pipe.prompt_template_encode_start_idx == 34
    ids = tok(QWEN_TEMPLATE.format("a red square")).input_ids
    assert tok.convert_ids_to_tokens(ids[34:37]) == ["a", "Ġred", "Ġsquare"]
