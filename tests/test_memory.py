"""The memory options for the DiT families: blocks_to_swap gives the same losses, gradients and LoRA as no swap
while at most total - N blocks hold weights; quantize_base, 8-bit Adam and the full-size random built-ins are
refused on a CPU before anything loads; Adafactor trains a Flux LoRA."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import make_images, run_training, sets
from engine.config import ConfigError
from engine.events import read_events

TINY = dict(resolution=64, rank=4, lora_alpha=2, learning_rate=2e-3, lr_warmup_steps=0, seed=3, train_batch_size=2,
            max_train_steps=3, report_to="none", pretrained_model_name_or_path="builtin:tiny-flux")
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without CUDA")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("mem") / "data", n=4)


def _flux():
    """A small Flux transformer (2 double + 3 single blocks) with LoRA in every block."""
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig

    torch.manual_seed(0)
    m = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16,
                               num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                               axes_dims_rope=(4, 6, 6), guidance_embeds=True)
    m.requires_grad_(False)
    m.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                             target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_mlp", "proj_out"]))
    return m


def _step(m) -> tuple[float, dict, torch.Tensor]:
    """A training forward and backward, then two no-grad forwards (as sampling runs them)."""
    g = torch.Generator().manual_seed(1)
    x = dict(hidden_states=torch.randn(2, 16, 16, generator=g), encoder_hidden_states=torch.randn(2, 8, 32, generator=g),
             pooled_projections=torch.randn(2, 32, generator=g), timestep=torch.tensor([0.3, 0.7]),
             guidance=torch.tensor([1.0, 1.0]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), return_dict=False)
    loss = m(**x)[0].pow(2).mean()
    loss.backward()
    with torch.no_grad():
        m(**x)
        sample = m(**x)[0]
    return loss.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}, sample


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("n_swap", [1, 2, 4])
def test_block_swap_gives_the_same_loss_and_gradients(checkpointing, n_swap):
    from engine.block_swap import install

    plain = _flux()
    if checkpointing:
        plain.enable_gradient_checkpointing()
    want = _step(plain)

    m = _flux()
    if checkpointing:
        m.enable_gradient_checkpointing()
    swap = install(m, n_swap, compute="cpu", offload="cpu")  # offloaded = the separate copies in swap.home
    total, resident_cap = swap.n, swap.n - n_swap
    seen = {"max": 0, "ran": set()}

    def holding() -> list[int]:
        return [i for i, ps in enumerate(swap.frozen) if all(p.numel() for p in ps)]

    def observe(i):
        def hook(*_):
            now = holding()
            assert i in now, f"block {i} ran without its weights"
            if i in swap.home:  # the compute copy is its own tensor, not the offloaded one
                assert all(p.data_ptr() != h.data_ptr() for p, h in zip(swap.frozen[i], swap.home[i]))
            assert len(now) <= resident_cap, f"{len(now)} of {total} blocks hold weights; at most {resident_cap}"
            assert all(p.numel() == 0 for j in set(range(total)) - set(now) for p in swap.frozen[j])
            seen["max"] = max(seen["max"], len(now))
            seen["ran"].add(i)
        return hook

    for i, block in enumerate(swap.blocks):  # after the swap's own hooks: they see what the block sees
        block.register_forward_pre_hook(observe(i))
        block.register_full_backward_pre_hook(observe(i))
    got = _step(m)
    assert got[0] == want[0]
    assert want[1].keys() == got[1].keys() and all(torch.equal(want[1][k], got[1][k]) for k in want[1])
    assert torch.equal(want[2], got[2])
    assert seen["ran"] == set(range(total)) and seen["max"] == resident_cap
    assert holding() == list(range(resident_cap))  # every pass ends where it began: the last blocks offloaded
    assert all(p.device.type == "cpu" and p.numel() for n, p in m.named_parameters() if p.requires_grad)  # LoRA stays


def test_block_swap_refuses_more_blocks_than_the_model_has():
    from engine.block_swap import install

    with pytest.raises(ConfigError, match=r"blocks_to_swap = 5, but this transformer has 5 blocks \(2 "
                                          r"transformer_blocks \+ 3 single_transformer_blocks\): swap at most 4"):
        install(_flux(), 5, "cpu")


def _lora(run) -> dict:
    return load_file(str(run / "diffusers" / "pytorch_lora_weights.safetensors"))


def _losses(run) -> list[float]:
    return [e["loss"] for e in read_events(run / "events.jsonl") if e["type"] == "step"]


def test_training_with_block_swap_matches_training_without(data, tmp_path):
    """A real run on builtin:tiny-flux (1 double + 1 single block, one swapped), with gradient checkpointing and
    sample images drawn through the swapped transformer."""
    common = dict(TINY, train_data_dir=data, output_dir=tmp_path, gradient_checkpointing=True,
                  validation_prompt="a red square", num_validation_images=1, num_inference_steps=2)
    run_training(sets(**common, adaptor_name="plain"), launch=False)
    proc = run_training(sets(**common, adaptor_name="swap", blocks_to_swap=1), launch=False)
    assert "block swap: 1 of 2 transformer blocks" in proc.stdout
    plain, swapped = tmp_path / "plain", tmp_path / "swap"
    assert len(_losses(plain)) == 3 and np.allclose(_losses(plain), _losses(swapped), rtol=0, atol=1e-6)
    a, b = _lora(plain), _lora(swapped)
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    for name in sorted(p.name for p in (plain / "samples").glob("*.png")):
        assert np.array_equal(np.asarray(Image.open(plain / "samples" / name)),
                              np.asarray(Image.open(swapped / "samples" / name)))


@pytest.mark.parametrize("settings,says", [
    (dict(blocks_to_swap=2), "blocks_to_swap = 2, but this transformer has 2 blocks"),
    (dict(pretrained_model_name_or_path="builtin:tiny-sd", blocks_to_swap=1),
     "blocks_to_swap = 1 applies to the DiT families' transformer"),
    pytest.param(dict(quantize_base="nf4"), 'quantize_base = "nf4" needs a CUDA GPU and bitsandbytes '
                                            "(pip install bitsandbytes)", marks=cpu_only),
    pytest.param(dict(quantize_base="int8"), 'quantize_base = "int8" needs a CUDA GPU and bitsandbytes',
                 marks=cpu_only),
    pytest.param(dict(quantize_base="fp8"), 'quantize_base = "fp8" needs a CUDA GPU with fp8', marks=cpu_only),
    pytest.param(dict(pretrained_model_name_or_path="builtin:random-flux1"),
                 "builtin:random-flux1 is built with random weights straight on a CUDA GPU", marks=cpu_only),
    pytest.param(dict(pretrained_model_name_or_path="builtin:random-sd35"), "use builtin:tiny-sd3 here",
                 marks=cpu_only),
])
def test_memory_options_are_refused_clearly(data, tmp_path, settings, says):
    proc = run_training(sets(**{**TINY, **settings}, train_data_dir=data, output_dir=tmp_path, adaptor_name="x"),
                        launch=False, expect_rc=2)
    err = proc.stdout + proc.stderr
    assert says in err and "Traceback" not in err, err
    assert not (tmp_path / "x" / "x.safetensors").exists()


@cpu_only
@pytest.mark.parametrize("kind", ["nf4", "int8", "fp8"])
def test_check_reports_quantize_base_on_a_cpu(data, tmp_path, kind):
    proc = run_training(sets(**TINY, train_data_dir=data, output_dir=tmp_path, quantize_base=kind) + ["--check"],
                        launch=False, expect_rc=2)
    assert f'error: quantize_base = "{kind}" needs a CUDA GPU' in proc.stderr and "Traceback" not in proc.stderr


def test_adafactor_trains_a_flux_lora(data, tmp_path):
    run_training(sets(**TINY, train_data_dir=data, output_dir=tmp_path, adaptor_name="ada", optimizer="adafactor"),
                 launch=False)
    events = read_events(tmp_path / "ada" / "events.jsonl")
    assert events[-1]["type"] == "done" and events[-1]["optimizer_steps"] == 3
    lora = _lora(tmp_path / "ada")
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in lora.items())  # B moved from zero


@cpu_only
def test_bench_lists_the_dit_rows_and_refuses_them_clearly_on_a_cpu():
    """The full-size rows run on a GPU (bench/gpu_check.sh); here they are listed and say why they cannot run."""
    import json
    import os
    import subprocess
    import sys

    from bench.train_speed import ROWS
    from conftest import ROOT

    rows = {r.name: r for r in ROWS}
    assert {"flux1-lora-1024-b1", "flux1-lora-1024-b1-16gb", "flux1-lora-1024-b1-12gb", "sd35-lora-1024-b1"} <= set(rows)
    assert rows["flux1-lora-1024-b1-12gb"].settings["blocks_to_swap"] == 32
    script = (ROOT / "bench" / "gpu_check.sh").read_text()
    assert "flux1-lora-1024-b1-12gb,flux1-lora-1024-b1,sd35-lora-1024-b1" in script
    proc = subprocess.run([sys.executable, "-m", "bench.train_speed", "--device", "cpu", "--json", "--rows",
                           "flux1-lora-1024-b1,flux1-lora-1024-b1-12gb", "--steps", "1", "--warmup", "0"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = {r["row"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert "straight on a CUDA GPU" in out["flux1-lora-1024-b1"]["error"]
    assert out["flux1-lora-1024-b1-12gb"]["skipped"] == "needs CUDA (NF4 base, 8-bit Adam)"


def test_flux_forward_flops_are_counted_on_the_real_config():
    """The MFU's FLOPs: the full-size configs on the meta device (no weights), at 1024 px."""
    from bench.train_speed import dit_forward_tflop
    import engine.builtin.random_dit as random_dit

    if not torch.cuda.is_available():  # the folder holds no weights: writing it needs no GPU
        pytest.MonkeyPatch().setattr(random_dit, "_needs_cuda", lambda *a: None)
    assert dit_forward_tflop("builtin:random-flux1", 1024) == pytest.approx(74.38, abs=0.01)
