"""Generation with an adaptor (engine.generate, engine.gen_worker): the comparison grid, img2img, inpainting,
the worker process and the CLI, on builtin:tiny-sd at 64 px with 4 steps.

The run folders are written by the engine's own exporters (engine.methods.lora / full, save_config), with
LoRA up-weights drawn at random: training initialises them to zero, and a few training steps would cost an
accelerate launch for the same files.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, make_images
from engine.builtin import resolve_builtin
from engine.config import save_config, validate
from engine.families import get_family
from engine.generate import GenerationError, PipeCache, compare_grid, img2img, inpaint
from engine.gen_worker import GenerationWorker
from engine.methods import full, lora
from lora_checks import load_base

STEPS = dict(steps=4, guidance=5.0)
PROMPTS = ["a red square", "a blue circle"]


def _write_run(root, method: str, name: str):
    cfg = validate({"train_data_dir": str(root / "data"), "output_dir": str(root), "adaptor_name": name,
                    "resolution": 64, "trigger_word": "sks", "rank": 4, "lora_alpha": 8.0,
                    "train_text_encoder": method == "lora", "method": method})
    family, source = get_family(cfg)
    comps = family.load(source, cfg, torch.float32)
    m = {"lora": lora, "full": full}[method]
    m.prepare(comps, cfg)
    modules = m.trained_modules(comps, cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in modules.values():
            for pname, p in module.named_parameters():
                if method == "full" or "lora_B" in pname:
                    p.add_(torch.randn(p.shape, generator=gen) * (0.02 if method == "full" else 0.3))
    run = root / name
    m.write_outputs(run, cfg, comps, modules, {})
    save_config(cfg, run / "config.toml")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    make_images(root / "data", n=2)
    return {"lora": _write_run(root, "lora", "lo"), "full": _write_run(root, "full", "fu"), "root": root}


def _arr(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def _fresh(prompt, seed=0, lora_file=None) -> np.ndarray:
    """An independent generation: the pipeline loaded with diffusers itself, sampled with DPM-Solver++ as
    the engine samples (validation images too)."""
    from diffusers import DPMSolverMultistepScheduler
    pipe = load_base("builtin:tiny-sd", "sd1")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    if lora_file:
        pipe.load_lora_weights(str(lora_file))
    img = pipe(prompt, num_inference_steps=4, guidance_scale=5.0, height=64, width=64,
               generator=torch.Generator().manual_seed(seed)).images[0]
    return np.asarray(img).astype(np.int16)


def test_grid_rows_columns_base_and_adaptor(runs, tmp_path):
    cache = PipeCache()
    res = compare_grid(None, runs["lora"], PROMPTS, seed=3, out=tmp_path / "grid.png", pipe_cache=cache, **STEPS)
    assert res["rows"] == 2 and res["cols"] == 3 and res["trigger"] == "sks"
    assert res["columns"] == ["base", "adaptor", "adaptor + sks"] and res["base"] == "builtin:tiny-sd"
    grid = Image.open(res["grid"])
    head = res["header_height"]
    assert grid.format == "PNG" and grid.size == (3 * 64, head + 2 * 64) and head > 0
    assert json.loads(grid.info["parameters"])["prompts"] == PROMPTS
    garr = np.asarray(grid.convert("RGB")).astype(np.int16)
    for r, row in enumerate(res["cells"]):
        for c, cell in enumerate(row):  # each cell sits in the grid where it belongs
            assert np.array_equal(garr[head + 64 * r: head + 64 * (r + 1), 64 * c: 64 * (c + 1)], _arr(cell))
    assert garr[:head].min() < 128, "no header text drawn"
    base0, ad0, trig0 = (_arr(p) for p in res["cells"][0])
    assert np.abs(ad0 - base0).max() > 20, "the adaptor does not change the image"
    assert np.abs(trig0 - ad0).max() > 5, "the trigger word changes nothing"
    # same seed along the row: the cells are what a fresh pipeline draws with that seed
    assert np.abs(base0 - _fresh(PROMPTS[0], seed=3)).max() <= 2
    lora_file = runs["lora"] / "diffusers" / "pytorch_lora_weights.safetensors"
    assert np.abs(ad0 - _fresh(PROMPTS[0], seed=3, lora_file=lora_file)).max() <= 2
    assert np.abs(trig0 - _fresh("sks, " + PROMPTS[0], seed=3, lora_file=lora_file)).max() <= 2

    # again on the same cache: no reload, and the LoRA of the first request is gone from the base column
    again = compare_grid(None, runs["lora"], PROMPTS[:1], seed=3, out=tmp_path / "g2.png", pipe_cache=cache, **STEPS)
    assert cache.loads == 1 and not cache.slots["base"][1].get_list_adapters()
    assert np.array_equal(_arr(again["cells"][0][0]), base0)
    assert np.array_equal(_arr(again["cells"][0][1]), ad0)


def test_kohya_file_scale_and_no_trigger(runs, tmp_path):
    cache = PipeCache()
    from_run = compare_grid(None, runs["lora"], PROMPTS[:1], out=tmp_path / "a.png", pipe_cache=cache, **STEPS)
    bare = tmp_path / "elsewhere" / "lo.safetensors"  # out of its run folder: only the file's own metadata
    bare.parent.mkdir()
    shutil.copy(runs["lora"] / "lo.safetensors", bare)
    with pytest.raises(GenerationError, match="give the base model.*builtin:tiny-sd"):
        compare_grid(None, bare, PROMPTS[:1], out=tmp_path / "x.png", pipe_cache=cache, **STEPS)
    from_file = compare_grid("builtin:tiny-sd", bare, PROMPTS[:1], out=tmp_path / "b.png", pipe_cache=cache, **STEPS)
    assert from_file["trigger"] == "sks"  # from modelspec.trigger_phrase
    for a, b in zip(from_run["cells"][0], from_file["cells"][0]):
        assert np.abs(_arr(a) - _arr(b)).max() <= 2
    zero = compare_grid("builtin:tiny-sd", bare, PROMPTS[:1], trigger="", lora_scale=0.0, out=tmp_path / "c.png",
                        pipe_cache=cache, **STEPS)
    assert zero["cols"] == 2 and Image.open(zero["grid"]).size[0] == 2 * 64
    assert np.abs(_arr(zero["cells"][0][1]) - _arr(zero["cells"][0][0])).max() <= 2  # scale 0 = the base
    assert cache.loads == 1
    other = tmp_path / "other-base"  # another base replaces the loaded one
    shutil.copytree(resolve_builtin("builtin:tiny-sd"), other)
    compare_grid(str(other), bare, PROMPTS[:1], out=tmp_path / "d.png", pipe_cache=cache, **STEPS)
    assert cache.loads == 2 and list(cache.slots) == ["base"]
    assert cache.slots["base"][0][0].pretrained_model_name_or_path == str(other)


def test_full_run_uses_its_own_pipeline(runs, tmp_path):
    cache = PipeCache()
    res = compare_grid(None, runs["full"], PROMPTS[:1], width=64, height=64, out=tmp_path / "f.png",
                       pipe_cache=cache, **STEPS)
    assert res["method"] == "full" and res["cols"] == 3 and cache.loads == 2
    base, tuned, _ = (_arr(p) for p in res["cells"][0])
    assert np.abs(base - _fresh(PROMPTS[0])).max() <= 2
    assert np.abs(tuned - base).max() > 20


def test_img2img_and_inpaint_keep_the_input_size(runs, tmp_path):
    cache = PipeCache()
    src = make_images(tmp_path / "in", n=1, size=(80, 72), captions=False) / "img0.png"
    out = img2img(None, runs["lora"], "a red square", src, strength=0.6, out=tmp_path / "i2i.png",
                  pipe_cache=cache, **STEPS)
    assert out["prompt"] == "sks, a red square" and Image.open(out["image"]).size == (80, 72)
    mask = np.zeros((72, 80), np.uint8)
    mask[:, :40] = 255  # white = repaint the left half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    res = inpaint(None, runs["lora"], "a red square", src, tmp_path / "mask.png", out=tmp_path / "inp.png",
                  pipe_cache=cache, **STEPS)
    got, orig = _arr(res["image"]), _arr(src)
    assert got.shape == orig.shape
    assert np.array_equal(got[:, 40:], orig[:, 40:]), "pixels outside the mask changed"
    assert np.abs(got[:, :40] - orig[:, :40]).max() > 20, "the masked part was not repainted"
    assert cache.loads == 1 and not cache.slots["base"][1].get_list_adapters()


def test_bad_adaptors_say_which_path(runs, tmp_path):
    no_adaptor = tmp_path / "pending"
    no_adaptor.mkdir()
    shutil.copy(runs["lora"] / "config.toml", no_adaptor / "config.toml")  # a run still training
    not_lora = tmp_path / "model.safetensors"
    from safetensors.torch import save_file
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(not_lora))
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"not read")
    cases = [(tmp_path / "nope", "not found"), (no_adaptor, "no adaptor yet"),
             (not_lora, "full model checkpoint"), (pickle, "must be .safetensors")]
    for path, words in cases:
        with pytest.raises(GenerationError, match=words) as e:
            compare_grid("builtin:tiny-sd", path, PROMPTS, out=tmp_path / "x.png", **STEPS)
        assert str(path) in str(e.value)
    with pytest.raises(GenerationError, match="width"):
        compare_grid(None, runs["lora"], PROMPTS, width=70, out=tmp_path / "x.png", **STEPS)
    with pytest.raises(GenerationError, match="prompt"):
        compare_grid(None, runs["lora"], ["", "  "], out=tmp_path / "x.png", **STEPS)
    assert not (tmp_path / "x.png").exists()


def _serve_env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.slow  # starts Python processes (torch import: ~10 s each on 2 busy cores)
def test_serve_protocol_keeps_stdout_to_responses(runs, tmp_path):
    compare = {"op": "compare", "base": None, "adaptor": str(runs["lora"]), "prompts": ["a red square"],
               "out": str(tmp_path / "w.png"), **STEPS}
    lines = ["not json", json.dumps({"id": 1, "op": "ping"}), json.dumps({"id": 2, "op": "draw"}),
             json.dumps({"id": 3, **compare, "colour": "red"}), json.dumps({"id": 4, **compare}),
             json.dumps({"id": 5, **compare})]
    proc = subprocess.run([sys.executable, "-m", "engine.generate", "--serve"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, cwd=tmp_path, env=_serve_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = [json.loads(line) for line in proc.stdout.splitlines()]  # every stdout line is a response
    assert [r["id"] for r in out] == [None, 1, 2, 3, 4, 5]
    assert [r["ok"] for r in out] == [False, True, False, False, True, True]
    assert "draw" in out[2]["error"] and "colour" in out[3]["error"]
    assert out[4]["loads"] == 1 and out[5]["loads"] == 1  # the second compare reuses the loaded base
    assert Image.open(out[5]["grid"]).size[0] == 3 * 64


@pytest.mark.slow  # starts Python processes (torch import: ~10 s each on 2 busy cores)
def test_worker_client_errors_and_restart(runs, tmp_path):
    log = tmp_path / "worker.log"
    with GenerationWorker(log_path=log) as worker:
        first = worker.request("compare", base=None, adaptor=str(runs["lora"]), prompts=PROMPTS,
                               out=str(tmp_path / "a.png"), **STEPS)
        pid = worker.pid
        with pytest.raises(GenerationError, match="missing-run"):
            worker.request("compare", base=None, adaptor=str(tmp_path / "missing-run"), prompts=PROMPTS,
                           out=str(tmp_path / "b.png"))
        second = worker.request("compare", base=None, adaptor=str(runs["lora"]), prompts=PROMPTS,
                                out=str(tmp_path / "c.png"), **STEPS)
        assert first["loads"] == second["loads"] == 1 and worker.pid == pid
        assert np.array_equal(_arr(first["cells"][1][0]), _arr(second["cells"][1][0]))
        os.kill(pid, signal.SIGKILL)  # a crash between requests: the next request starts a new worker
        worker._proc.wait()
        assert worker.request("ping")["pid"] not in (None, pid) and worker.restarts == 1
    assert worker.pid is None
    assert log.is_file()


@pytest.mark.slow  # starts Python processes (torch import: ~10 s each on 2 busy cores)
def test_cli_compare_img2img_inpaint_and_bad_input(runs, tmp_path, capsys):
    from engine.generate import main
    grid = tmp_path / "cli" / "grid.png"
    proc = subprocess.run([sys.executable, "-m", "engine.generate", "compare", "--adaptor", str(runs["lora"]),
                           "--prompt", "a red square", "--prompt", "a blue circle", "--steps", "4", "--seed", "7",
                           "--out", str(grid)], capture_output=True, text=True, cwd=tmp_path, env=_serve_env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(grid)
    assert Image.open(grid).size[0] == 3 * 64 and len(list((tmp_path / "cli" / "grid-cells").glob("*.png"))) == 6

    src = make_images(tmp_path / "in", n=1, captions=False) / "img0.png"
    assert main(["img2img", "--adaptor", str(runs["lora"]), "--prompt", "a red square", "--image", str(src),
                 "--strength", "0.5", "--steps", "4", "--out", str(tmp_path / "i.png")]) == 0
    Image.new("L", (64, 64), 255).save(tmp_path / "m.png")
    assert main(["inpaint", "--adaptor", str(runs["lora"]), "--image", str(src), "--mask", str(tmp_path / "m.png"),
                 "--steps", "4", "--no-trigger", "--out", str(tmp_path / "p.png")]) == 0
    assert Image.open(tmp_path / "i.png").size == Image.open(tmp_path / "p.png").size == (64, 64)
    capsys.readouterr()
    missing = tmp_path / "no-such-run"
    assert main(["compare", "--adaptor", str(missing), "--prompt", "x", "--out", str(tmp_path / "z.png")]) == 2
    assert str(missing) in capsys.readouterr().err and not (tmp_path / "z.png").exists()
    assert main(["inpaint", "--adaptor", str(runs["lora"]), "--image", str(src), "--mask", str(tmp_path / "nope.png"),
                 "--out", str(tmp_path / "z.png")]) == 2
    assert "nope.png" in capsys.readouterr().err


def test_a_run_trained_with_clip_skip_is_compared_with_it(runs, tmp_path):
    """kohya/AUTOMATIC1111's clip_skip: a run trained on the layer before the last is drawn from that layer too
    (read from its config.toml), unless the request says otherwise; the grid's PNG records it."""
    from diffusers import DPMSolverMultistepScheduler
    run = tmp_path / "skip"
    shutil.copytree(runs["lora"], run)
    config = run / "config.toml"
    config.write_text(config.read_text().replace("clip_skip = 1", "clip_skip = 2"))
    assert "clip_skip = 2" in config.read_text()
    cache = PipeCache()
    own = compare_grid(None, run, ["a red square"], seed=1, out=tmp_path / "own.png", pipe_cache=cache, **STEPS)
    one = compare_grid(None, run, ["a red square"], seed=1, out=tmp_path / "one.png", pipe_cache=cache, clip_skip=1,
                       **STEPS)
    assert json.loads(Image.open(own["grid"]).text["parameters"])["clip_skip"] == 2
    base_own, base_one = _arr(own["cells"][0][0]), _arr(one["cells"][0][0])
    assert np.abs(base_own - base_one).max() > 0  # the layer matters to the picture

    # the base column equals diffusers given the penultimate layer's states through the final layer norm
    pipe = load_base("builtin:tiny-sd", "sd1")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    te = pipe.text_encoder
    with torch.no_grad():
        def states(text):
            ids = pipe.tokenizer([text], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            hidden = te(ids, output_hidden_states=True).hidden_states[-2]
            return getattr(te, "text_model", te).final_layer_norm(hidden)
        img = pipe(prompt_embeds=states("a red square"), negative_prompt_embeds=states(""), num_inference_steps=4,
                   guidance_scale=5.0, height=64, width=64, generator=torch.Generator().manual_seed(1)).images[0]
    assert np.abs(base_own - np.asarray(img).astype(np.int16)).max() <= 2
    with pytest.raises(GenerationError, match="clip_skip = 0 must be"):
        compare_grid(None, run, ["a red square"], out=tmp_path / "bad.png", pipe_cache=cache, clip_skip=0, **STEPS)
