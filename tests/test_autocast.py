"""Sampling under autocast: the UNet runs in the training precision, the VAE decodes in its own (float32).
Under fp16 autocast, SDXL's VAE overflows to NaN, so validation and Compare images came out black on a GPU;
bf16 on this CPU shows the same casting."""
import torch

from engine.autocast import pipeline_autocast
from lora_checks import load_base


def _dtypes_seen(pipe, context):
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, output.dtype)  # returns None: the output is left as it is
        return hook

    hooks = [pipe.unet.conv_out.register_forward_hook(record("unet")),
             pipe.vae.decoder.conv_out.register_forward_hook(record("vae"))]
    try:
        with context:
            image = pipe("a red square", num_inference_steps=2, height=64, width=64, output_type="np",
                         generator=torch.Generator().manual_seed(0)).images[0]
    finally:
        for h in hooks:
            h.remove()
    return seen, image


def test_the_vae_decodes_outside_autocast_while_the_unet_runs_in_it():
    pipe = load_base("builtin:tiny-sd", "sd1")
    plain, _ = _dtypes_seen(pipe, torch.autocast("cpu", dtype=torch.bfloat16))
    assert plain == {"unet": torch.bfloat16, "vae": torch.bfloat16}  # what sampling did before
    ours, image = _dtypes_seen(pipe, pipeline_autocast(pipe, torch.bfloat16))
    assert ours == {"unet": torch.bfloat16, "vae": torch.float32}
    assert torch.isfinite(torch.from_numpy(image)).all()
    assert "decode" not in vars(pipe.vae)  # the pipeline's VAE is itself again afterwards
    full, _ = _dtypes_seen(pipe, pipeline_autocast(pipe, torch.float32))
    assert full == {"unet": torch.float32, "vae": torch.float32}
