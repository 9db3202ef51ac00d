"""Autocast for sampling: the denoiser and text encoders run in the training precision, the VAE in its own.

Under fp16 autocast SDXL's VAE overflows to NaN (a black image) even when its weights are float32: autocast
casts its convolutions down. diffusers only upcasts a VAE stored in fp16, so an fp32 VAE beside an fp16 UNet
(what training keeps) would decode in fp16. The decode therefore runs with autocast off, in the VAE's dtype.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def pipeline_autocast(pipe, dtype: torch.dtype):
    if dtype == torch.float32:
        yield
        return
    vae, device_type = pipe.vae, pipe.device.type
    decode = vae.decode

    def decode_outside_autocast(z, *args, **kwargs):
        with torch.autocast(device_type, enabled=False):
            return decode(z.to(vae.dtype), *args, **kwargs)

    vae.decode = decode_outside_autocast  # an instance attribute over the class's method, removed below
    try:
        with torch.autocast(device_type, dtype=dtype):
            yield
    finally:
        del vae.decode
