"""engine/tools: inspect and convert (issue #18), on the tiny SD 1.x pipeline with LoRA files written by diffusers'
save_lora_weights, our kohya writer and LyCORIS' names; through `python -m engine.tools` where the CLI matters."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT
from lora_checks import image, load_base
from tools_loras import BASE, save_diffusers_lora, save_kohya_lora, save_lycoris_file, tools
from engine.methods.lora import load_peft_folders
from engine.tools import ToolError, lora_file, names
from engine.tools.inspect import inspect
from engine.tools.merge import apply_to_pipeline

TAGS = {"10_sks": {"sks dog": 7, "red": 3}, "5_reg": {"dog": 4, "red": 2}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loras")
    pipe = load_base(BASE, "sd1")
    meta = {"ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_base_model_version": "sd_v1",
            "ss_tag_frequency": json.dumps(TAGS), "modelspec.trigger_phrase": "sks",
            "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.title": "dog"}
    return {"diffusers": save_diffusers_lora(pipe, tmp / "diffusers", seed=0),
            "kohya": save_kohya_lora(pipe, tmp / "kohya.safetensors", metadata=meta),
            "loha": save_lycoris_file(pipe, tmp / "loha.safetensors", "loha"),
            # LoKr at rank 2: LyCORIS (and peft) split w2 only below half its larger side (8 here)
            "lokr": save_lycoris_file(pipe, tmp / "lokr.safetensors", "lokr", rank=2, seed=30)}


@pytest.fixture(scope="module")
def arch():
    return names.model_arch(BASE)


def test_inspect_reads_diffusers_kohya_and_lycoris_files(files):
    d = inspect(files["diffusers"], BASE)
    assert (d["layout"], d["family"], d["kinds"]) == ("diffusers", "sd1", ["lora"])
    assert d["components"] == {"unet": 44, "text_encoder": 8}
    # alpha comes from diffusers' adapter metadata: 2 on the UNet, 8 on the text encoder, so it varies
    assert {(g["component"], g["rank"], g["alpha"]) for g in d["ranks"]} == {("unet", 4, 2.0), ("text_encoder", 4, 8.0)}
    assert d["rank_varies"]
    assert d["loaders"]["diffusers"]["all"] is True
    # diffusers writes the text encoder under transformers 5's names (no `text_model.`): ComfyUI's key map has
    # only `text_encoder.text_model...` and `...processor.to_q` names, so it drops those keys
    comfy = d["loaders"]["comfyui"]
    assert comfy["all"] is False and any(k.startswith("text_encoder.encoder.layers.0") for k in comfy["not_loaded"])

    k = inspect(files["kohya"], BASE)
    assert (k["layout"], k["family"]) == ("kohya", "sd1")
    assert {(g["rank"], g["alpha"]) for g in k["ranks"]} == {(4, 2.0)} and not k["rank_varies"]
    assert k["trigger"] == "sks" and k["tags"][:2] == [("sks dog", 7), ("red", 5)]
    assert k["ss"]["ss_network_dim"] == "4" and k["modelspec"]["modelspec.title"] == "dog"
    assert k["loaders"]["diffusers"]["all"] and k["loaders"]["comfyui"]["all"]

    for kind in ("loha", "lokr"):
        ly = inspect(files[kind], BASE)
        assert ly["kinds"] == [kind] and ly["components"] == {"unet": 24}, kind
        assert [(g["rank"], g["alpha"]) for g in ly["ranks"]] == [(4 if kind == "loha" else 2, 2.0)]
        assert ly["loaders"]["comfyui"]["all"] is True
        assert ly["loaders"]["diffusers"]["all"] is False  # diffusers has no LoHa / LoKr loader


def test_inspect_cli_prints_the_report_and_json(files):
    text = tools("inspect", files["kohya"], "--base", BASE)[0]
    assert "layout: kohya" in text and "trigger: sks" in text and "sks dog (7)" in text
    assert "diffusers: loads every key" in text and "comfyui: loads every key" in text
    report = json.loads(tools("inspect", files["lokr"], "--base", BASE, "--json")[0])
    assert report["kinds"] == ["lokr"] and report["layout"] == "kohya"


def _same(a: lora_file.LoraFile, b: lora_file.LoraFile) -> None:
    assert a.modules.keys() == b.modules.keys()
    for key, m in a.modules.items():
        n = b.modules[key]
        assert (m.kind, m.alpha, m.rank) == (n.kind, n.alpha, n.rank), key
        assert m.parts.keys() == n.parts.keys(), key
        for part, value in m.parts.items():
            assert torch.equal(value, n.parts[part]), (key, part)


def test_convert_round_trips_are_exact(files, arch, tmp_path):
    original = lora_file.read(files["diffusers"], arch)
    current, path = original, files["diffusers"]
    for i, layout in enumerate(("kohya", "comfyui", "diffusers", "kohya", "peft", "diffusers")):
        out = tmp_path / (f"{i}-{layout}" + ("" if layout == "peft" else ".safetensors"))
        tools("convert", path, "--layout", layout, "--out", out, "--base", BASE)
        current, path = lora_file.read(out, arch), out
        assert current.layout == layout
        _same(original, current)
    # the key layouts as the loaders know them
    assert all(k.startswith(("diffusion_model.", "text_encoders.clip_l.transformer.text_model."))
               for k in load_file(str(tmp_path / "1-comfyui.safetensors")))
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in load_file(str(tmp_path / "0-kohya.safetensors")))

    for kind in ("loha", "lokr"):  # LyCORIS <-> peft folders
        lycoris = lora_file.read(files[kind], arch)
        tools("convert", files[kind], "--layout", "peft", "--out", tmp_path / kind, "--base", BASE)
        tools("convert", tmp_path / kind, "--layout", "kohya", "--out", tmp_path / f"{kind}.safetensors",
              "--base", BASE)
        _same(lycoris, lora_file.read(tmp_path / f"{kind}.safetensors", arch))
        assert load_file(str(tmp_path / f"{kind}.safetensors")).keys() == load_file(str(files[kind])).keys()


def test_each_layout_draws_the_same_image(files, arch, tmp_path):
    base = load_base(BASE, "sd1")
    plain = image(base)
    base.load_lora_weights(str(files["diffusers"]))
    want = image(base)
    assert np.abs(want - plain).max() > 1e-2  # the LoRA changes the image
    lf = lora_file.read(files["diffusers"], arch)
    for layout in ("kohya", "diffusers"):
        out = lora_file.write(lf, tmp_path / f"{layout}.safetensors", layout, arch=arch)
        pipe = load_base(BASE, "sd1")
        pipe.load_lora_weights(str(out))
        assert np.abs(image(pipe) - want).max() < 1e-4, layout
    # diffusers refuses the ComfyUI layout (`diffusion_model.` keys): it loads converted back, as the same LoRA
    comfy = lora_file.write(lf, tmp_path / "comfy.safetensors", "comfyui", arch=arch)
    with pytest.raises(ValueError):
        load_base(BASE, "sd1").load_lora_weights(str(comfy))
    pipe = load_base(BASE, "sd1")
    pipe.load_lora_weights(str(lora_file.write(lora_file.read(comfy, arch), tmp_path / "k2.safetensors", "kohya")))
    assert np.abs(image(pipe) - want).max() < 1e-4
    # the peft folders load through the engine's peft loader (what LoHa / LoKr runs use)
    pipe = load_base(BASE, "sd1")
    load_peft_folders(pipe, lora_file.write(lf, tmp_path / "peft", "peft"), "x")
    assert np.abs(image(pipe) - want).max() < 1e-4


def test_sdxl_layouts_round_trip_and_draw_the_same_image(tmp_path):
    xl = "builtin:tiny-sdxl"
    arch, pipe = names.model_arch(xl), load_base(xl, "sdxl")
    original = lora_file.read(save_diffusers_lora(pipe, tmp_path / "d"), arch)
    assert original.components == {"unet", "text_encoder", "text_encoder_2"} and original.family == "sdxl"
    assert {m.alpha for (c, _), m in original.modules.items() if c == "text_encoder_2"} == {4.0}
    pipe.load_lora_weights(str(tmp_path / "d"))
    want = image(pipe)
    for layout, prefixes in (("kohya", ("lora_unet_", "lora_te1_", "lora_te2_")),
                             ("comfyui", ("diffusion_model.", "text_encoders.clip_l.", "text_encoders.clip_g.")),
                             ("diffusers", ("unet.", "text_encoder.", "text_encoder_2."))):
        tools("convert", tmp_path / "d", "--layout", layout, "--base", xl, "--out", tmp_path / f"{layout}.safetensors")
        keys = load_file(str(tmp_path / f"{layout}.safetensors"))
        assert {p for p in prefixes if any(k.startswith(p) for k in keys)} == set(prefixes), layout
        _same(original, lora_file.read(tmp_path / f"{layout}.safetensors", arch))
        report = inspect(tmp_path / f"{layout}.safetensors", xl)
        assert report["family"] == "sdxl" and report["loaders"]["comfyui"]["all"] is (layout != "diffusers")
        if layout != "comfyui":  # diffusers refuses `diffusion_model.` keys (the SD 1.x test converts them back)
            again = load_base(xl, "sdxl")
            again.load_lora_weights(str(tmp_path / f"{layout}.safetensors"))
            assert np.abs(image(again) - want).max() < 1e-4, layout

    # kohya's own SDXL files name UNet modules by their original (LDM) blocks: `lora_unet_input_blocks_4_1_...`
    ldm, comfy = {}, load_file(str(tmp_path / "comfyui.safetensors"))
    for key, value in comfy.items():
        module, _, part = key.rpartition(".lora_") if ".lora_" in key else key.rpartition(".")
        part = ("lora_" if ".lora_" in key else "") + part
        for prefix, kohya in (("diffusion_model.", "lora_unet_"), ("text_encoders.clip_l.transformer.", "lora_te1_"),
                              ("text_encoders.clip_g.transformer.", "lora_te2_")):
            if module.startswith(prefix):
                ldm[f"{kohya}{module[len(prefix):].replace('.', '_')}.{part}"] = value
    save_file(ldm, str(tmp_path / "kohya-ldm.safetensors"))
    assert any(k.startswith("lora_unet_input_blocks_") for k in ldm) and len(ldm) == len(comfy)
    _same(original, lora_file.read(tmp_path / "kohya-ldm.safetensors", arch))
    report = inspect(tmp_path / "kohya-ldm.safetensors", xl)
    assert report["loaders"]["diffusers"]["all"] and report["loaders"]["comfyui"]["all"]
    again = load_base(xl, "sdxl")
    again.load_lora_weights(str(tmp_path / "kohya-ldm.safetensors"))
    assert np.abs(image(again) - want).max() < 1e-4
    # a tiny model's LDM names need its block layout: without --base (the published SDXL's has other blocks)
    # the message names the module and asks for the base model
    err = tools("convert", tmp_path / "kohya-ldm.safetensors", "--out", tmp_path / "x.safetensors", expect_rc=2)[1]
    assert "published Stable Diffusion XL architecture has no module 'input_blocks." in err and "--base" in err


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_a_lycoris_file_as_peft_folders_draws_its_weight_changes(files, arch, tmp_path, kind):
    lf = lora_file.read(files[kind], arch)
    merged = load_base(BASE, "sd1")
    apply_to_pipeline(merged, lf)  # W + alpha / r x (w1a w1b) * (w2a w2b); W + alpha / r x kron(w1, w2a w2b)
    want = image(merged)
    assert np.abs(want - image(load_base(BASE, "sd1"))).max() > 1e-2
    pipe = load_base(BASE, "sd1")
    load_peft_folders(pipe, lora_file.write(lf, tmp_path / kind, "peft"), kind)
    assert np.abs(image(pipe) - want).max() < 1e-3


def test_user_errors_name_the_file_and_exit_2(files, tmp_path):
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04not really")
    # the real command line: one line on stderr, exit 2, no traceback
    proc = subprocess.run([sys.executable, "-m", "engine.tools", "inspect", str(pickle)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.ckpt" in proc.stderr and "pickle" in proc.stderr
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"garbage that is no safetensors header")
    assert "broken.safetensors" in tools("convert", broken, "--out", tmp_path / "o.safetensors", expect_rc=2)[1]
    other = tmp_path / "weights.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2)}, str(other))
    err = tools("resize", other, "--rank", "2", "--out", tmp_path / "o.safetensors", expect_rc=2)[1]
    assert "weights.safetensors holds no LoRA keys" in err
    # a tiny model's LoRA in the ComfyUI layout needs the base model's block layout
    err = tools("convert", files["kohya"], "--layout", "comfyui", "--out", tmp_path / "c.safetensors",
                expect_rc=2)[1]
    assert "--base" in err
    err = tools("merge", files["kohya"], files["diffusers"], "--weights", "1", "--out", tmp_path / "m.safetensors",
                expect_rc=2)[1]
    assert "2 files but 1 weights" in err
    assert not list(tmp_path.glob("[ocm].safetensors"))
    with pytest.raises(ToolError, match="diffusers cannot load loha"):
        lora_file.write(lora_file.read(files["loha"], names.model_arch(BASE)), tmp_path / "d.safetensors",
                        "diffusers")
    # LoKr factors cut another way than peft's factorization: refused before anything is written
    lf = lora_file.read(files["lokr"], names.model_arch(BASE))
    key = next(iter(lf.modules))
    m = lf.modules[key]
    w1, w2a = m.parts["lokr_w1"], m.parts["lokr_w2_a"]
    odd = lora_file.Module("lokr", {**m.parts, "lokr_w1": w1.reshape(-1, 1).repeat(1, w1.shape[1])[: w1.numel()],
                                    "lokr_w2_a": w2a[:1]}, m.alpha, m.rank)
    with pytest.raises(ToolError, match="not cut as peft cuts them"):
        lora_file.write(lora_file.LoraFile({**lf.modules, key: odd}), tmp_path / "p", "peft")
    assert not (tmp_path / "p").exists()
