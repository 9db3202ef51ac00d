"""engine/tools: resize and merge (issue #18) on the tiny SD 1.x pipeline, images drawn with a fixed seed."""
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lora_checks import image, load_base
from tools_loras import BASE, save_diffusers_lora, save_kohya_lora, tools
from engine.tools import lora_file, names
from engine.tools.lora_file import LoraFile, Module
from engine.tools.resize import resize


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loras")
    pipe = load_base(BASE, "sd1")
    # singular values falling off by 2 per rank, as a trained LoRA's do
    return {"a": save_diffusers_lora(pipe, tmp / "a", rank=4, unet_alpha=2.0, te_alpha=8.0, spread=2.0),
            "b": save_kohya_lora(pipe, tmp / "b.safetensors", rank=4, alpha=4.0, seed=50),
            "plain": image(pipe)}


def draw(*files, weights=None, base=BASE):
    pipe = load_base(base, "sd1")
    for i, f in enumerate(files):
        pipe.load_lora_weights(str(f), adapter_name=f"l{i}")
    if weights:
        pipe.set_adapters([f"l{i}" for i in range(len(files))], adapter_weights=weights)
    return image(pipe)


def diff(x, y) -> float:
    return float(np.abs(x - y).mean())


def test_resize_to_its_own_rank_draws_the_same_image(loras, tmp_path):
    out, err = tools("resize", loras["a"], "--rank", "4", "--layout", "diffusers", "--out", tmp_path / "r4.safetensors")
    assert "Frobenius norm kept: mean 100.00%" in out
    want = draw(loras["a"])
    assert np.abs(draw(tmp_path / "r4.safetensors") - want).max() < 1e-4


def _random_like(lf: LoraFile, seed: int) -> LoraFile:
    """A random LoRA of each module's rank whose weight change has the module's Frobenius norm."""
    gen, out = torch.Generator().manual_seed(seed), {}
    for key, m in lf.modules.items():
        down, up = (torch.randn(*m.parts[p].shape, generator=gen) for p in ("lora_A.weight", "lora_B.weight"))
        r = Module("lora", {"lora_A.weight": down, "lora_B.weight": up}, float(m.rank), m.rank)
        r.parts["lora_B.weight"] = up * (lora_file.frobenius(m) / lora_file.frobenius(r))
        out[key] = r
    return LoraFile(out, family=lf.family)


def test_resize_to_half_rank_moves_the_image_less_than_a_random_half_rank_lora(loras, tmp_path):
    arch = names.model_arch(BASE)
    original = lora_file.read(loras["a"], arch)
    half, rows = resize(original, 2)
    assert {r["new_rank"] for r in rows} == {2} and all(0.5 < r["fro_retained"] < 1 for r in rows)
    for key, m in half.modules.items():  # the scale is kept: alpha = scale x new rank
        assert math.isclose(m.scale, original.modules[key].scale)
        # the norm reported is the norm of what the module keeps
        row = next(r for r in rows if (r["component"], r["module"]) == key)
        assert math.isclose(lora_file.frobenius(m), row["fro_retained"] * lora_file.frobenius(original.modules[key]),
                            rel_tol=1e-4)
    lora_file.write(half, tmp_path / "half.safetensors", "diffusers")
    lora_file.write(_random_like(half, 7), tmp_path / "random.safetensors", "diffusers")
    want = draw(loras["a"])
    moved, random_moved, lora_moved = (diff(draw(tmp_path / "half.safetensors"), want),
                                       diff(draw(tmp_path / "random.safetensors"), want), diff(loras["plain"], want))
    print(f"\nhalf rank moved the image by {moved:.4f} (mean |d|), a random half-rank LoRA of the same norms by "
          f"{random_moved:.4f}; the LoRA itself moves the base image by {lora_moved:.4f}")
    assert moved < random_moved / 3
    assert moved < lora_moved / 2


def _spectrum_module(s: list[float], out=16, inp=12, seed=0) -> Module:
    """A LoRA module whose weight change has exactly the singular values s."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out, len(s), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inp, len(s), generator=gen, dtype=torch.float64))
    up, down = (u * torch.tensor(s, dtype=torch.float64)).float(), v.T.float()
    return Module("lora", {"lora_A.weight": down.contiguous(), "lora_B.weight": up.contiguous()}, float(len(s)), len(s))


@pytest.mark.parametrize("method,param,rank", [("sv_ratio", 3.0, 2), ("sv_ratio", 10.0, 4), ("sv_cumulative", 0.85, 3),
                                               ("sv_cumulative", 0.5, 1), ("sv_fro", 0.95, 2), ("sv_fro", 0.99, 3)])
def test_dynamic_resize_picks_the_rank_kohya_rules_give(method, param, rank):
    # S = 8, 4, 2, 1: sv_ratio keeps S > S0 / r; sv_cumulative the fewest with sum >= t of all (15);
    # sv_fro the fewest with sum of squares >= t^2 of all (85)
    lf = LoraFile({("unet", "a.to_q"): _spectrum_module([8, 4, 2, 1])})
    resized, (row,) = resize(lf, 4, method=method, param=param)
    assert row["new_rank"] == rank
    kept = [8, 4, 2, 1][:rank]
    assert math.isclose(row["fro_retained"], math.sqrt(sum(x * x for x in kept) / 85), rel_tol=1e-6)
    assert math.isclose(row["sum_retained"], sum(kept) / 15, rel_tol=1e-6)
    got = torch.linalg.svdvals(resized.modules[("unet", "a.to_q")].delta().double())
    assert torch.allclose(got[:rank], torch.tensor(kept, dtype=torch.float64), atol=1e-4)


def test_two_loras_merged_by_concatenation_draw_as_both_loaded(loras, tmp_path):
    out = tmp_path / "ab.safetensors"
    tools("merge", loras["a"], loras["b"], "--weights", "1.0", "0.5", "--out", out)
    merged = lora_file.read(out, names.model_arch(BASE))
    assert {m.rank for m in merged.modules.values()} == {8}  # ranks add
    assert any(k.endswith(".alpha") for k in load_file(str(out)))  # kohya layout by default
    both = draw(loras["a"], loras["b"], weights=[1.0, 0.5])
    assert diff(both, draw(loras["a"])) > 1e-3  # the second LoRA shows
    assert np.abs(draw(out) - both).max() < 1e-4

    # svd at the summed rank is the same change; at a lower rank it says what each module keeps
    tools("merge", loras["a"], loras["b"], "--weights", "1.0", "0.5", "--mode", "svd", "--rank", "8",
          "--out", tmp_path / "svd8.safetensors")
    assert np.abs(draw(tmp_path / "svd8.safetensors") - both).max() < 1e-4
    text, _ = tools("merge", loras["a"], loras["b"], "--weights", "1.0", "0.5", "--mode", "svd", "--rank", "3",
                    "--out", tmp_path / "svd3.safetensors")
    assert "ranks [3]" in text and "Frobenius norm kept: mean 100" not in text


def test_loras_merged_into_the_base_draw_as_the_loras_loaded(loras, tmp_path):
    from engine.single_file import pipeline_state_dict

    tools("merge-base", loras["a"], loras["b"], "--weights", "0.7", "1.0", "--base", BASE, "--out", tmp_path / "m",
          "--name", "merged")
    want = draw(loras["a"], loras["b"], weights=[0.7, 1.0])
    folder = load_base(str(tmp_path / "m" / "diffusers"), "sd1")
    reference = load_base(BASE, "sd1")
    folder.scheduler = type(reference.scheduler).from_config(reference.scheduler.config)
    assert np.abs(image(folder) - want).max() < 1e-3
    assert diff(image(folder), loras["plain"]) > 1e-3
    # the single-file checkpoint holds the merged weights under the original (LDM / CLIP) names: the folder's
    # weights as engine.single_file names them (loading it needs the Hub's config for a tiny model, so compare)
    single = load_file(str(tmp_path / "m" / "merged.safetensors"))
    ours, before = pipeline_state_dict(folder, "sd1"), pipeline_state_dict(reference, "sd1")
    assert single.keys() == ours.keys()
    assert all(torch.allclose(single[k].float(), ours[k].float(), atol=1e-6) for k in ours)
    changed = {k for k in ours if not torch.equal(ours[k], before[k])}
    assert any(".attn1.to_q." in k for k in changed) and any("cond_stage_model." in k for k in changed)
    assert not any(k.startswith("first_stage_model.") for k in changed)  # the VAE is as it was


def test_an_xy_grid_of_two_scales_by_two_loras_draws_what_compare_draws(loras, tmp_path):
    import json

    from PIL import Image

    from engine.generate import PipeCache, compare_grid

    cache = PipeCache(device=torch.device("cpu"))
    out = tmp_path / "grid.png"
    tools("grid", "--adaptor", loras["a"], "--adaptor", loras["b"], "--scales", "0.5", "1", "--base", BASE,
          "--prompt", "a red square", "--steps", "4", "--width", "64", "--height", "64", "--out", out)
    grid = Image.open(out)
    params = json.loads(grid.text["parameters"])  # the grid's settings in its PNG text chunk
    assert params["x"] == {"axis": "lora_scale", "values": [0.5, 1.0]}
    assert params["y"] == {"axis": "adaptor", "values": [str(loras["a"]), str(loras["b"])]}
    assert params["prompt"] == "a red square" and params["num_inference_steps"] == 4
    cells = {(r, c): np.asarray(Image.open(tmp_path / "grid-cells" / f"r{r}-c{c}.png"), dtype=np.float32)
             for r in range(2) for c in range(2)}
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # a header strip and row labels around 2 x 2 cells
    assert diff(cells[0, 0], cells[0, 1]) > 1 and diff(cells[0, 1], cells[1, 1]) > 1  # scale and LoRA both show
    # each cell is the Compare tab's image of that LoRA at that scale
    for r, lora in enumerate((loras["a"], loras["b"])):
        for c, scale in enumerate((0.5, 1.0)):
            made = compare_grid(BASE, lora, ["a red square"], steps=4, width=64, height=64, lora_scale=scale,
                                out=tmp_path / f"compare-{r}{c}.png", pipe_cache=cache)
            adaptor = np.asarray(Image.open(made["cells"][0][1]), dtype=np.float32)
            assert np.array_equal(adaptor, cells[r, c]), (r, c)


def test_a_dora_merged_into_the_base_draws_as_it_loads_and_resize_refuses_it(tmp_path):
    from peft import LoraConfig

    from engine.lora_load import load_lora
    from tools_loras import lora_state

    pipe = load_base(BASE, "sd1")
    state = lora_state(pipe.unet, ("to_q", "to_v", "proj_in"), 4, seed=3)
    gen = torch.Generator().manual_seed(4)
    for key in [k for k in state if k.endswith(".lora_A.weight")]:
        weight = pipe.unet.get_submodule(key.removesuffix(".lora_A.weight")).weight
        norm = weight.detach().flatten(1).norm(dim=1)
        magnitude = norm * (1 + 0.5 * torch.rand(len(norm), generator=gen))
        # peft holds a convolution's magnitudes as [1, out, 1, 1]
        state[key.replace(".lora_A.weight", ".lora_magnitude_vector")] = \
            magnitude.reshape(1, -1, 1, 1) if weight.dim() == 4 else magnitude
    config = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["to_q", "to_v", "proj_in"]).to_dict()
    type(pipe).save_lora_weights(str(tmp_path / "dora"), unet_lora_layers=state, unet_lora_adapter_metadata=config)
    loaded = load_base(BASE, "sd1")
    load_lora(loaded, tmp_path / "dora", "dora")
    want = image(loaded)
    assert diff(want, image(load_base(BASE, "sd1"))) > 1e-3
    tools("merge-base", tmp_path / "dora", "--base", BASE, "--out", tmp_path / "m")
    merged = load_base(str(tmp_path / "m" / "diffusers"), "sd1")
    merged.scheduler = type(loaded.scheduler).from_config(loaded.scheduler.config)
    assert np.abs(image(merged) - want).max() < 1e-3  # m (W + s BA) / |W + s BA| per output row, as peft does
    _, err = tools("resize", tmp_path / "dora", "--rank", "2", "--out", tmp_path / "r.safetensors", expect_rc=2)
    assert "DoRA" in err and not (tmp_path / "r.safetensors").exists()
