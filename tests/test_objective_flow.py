"""The flow-matching objective against diffusers' own training scripts and pipelines: the same timestep draws
for the same generator, the same loss weighting, the pipeline's resolution-dependent shift, and the Flux loss
computed as train_dreambooth_lora_flux.py computes it."""
import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from engine.config import validate
from engine.families import FAMILIES
from engine.objective_flow import draw_sigmas, loss_weighting, option_problems, shift_sigmas


def cfg(**kw):
    return validate({"pretrained_model_name_or_path": "builtin:tiny-flux", "train_data_dir": "unused", **kw})


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "none", "sigma_sqrt", "cosmap"])
def test_static_shift_draws_what_the_sd3_script_draws(scheme):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    c = cfg(weighting_scheme=scheme, logit_mean=0.3, logit_std=1.2, flow_dynamic_shift=False)
    ours = draw_sigmas(c, FAMILIES["sd3"], dict(scheduler.config), 64, 4096, torch.Generator().manual_seed(7), "cpu")
    # diffusers' script: u from the density, an index into the scheduler's (shifted, descending) timesteps
    u = compute_density_for_timestep_sampling(scheme, 64, 0.3, 1.2, 1.29, generator=torch.Generator().manual_seed(7))
    theirs = scheduler.sigmas[(u * 1000).long()]
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(loss_weighting(scheme, ours), compute_loss_weighting_for_sd3(scheme, ours))
    # sigma_sqrt and cosmap weight the loss per sample; the other schemes only shape the draw
    assert (loss_weighting(scheme, ours).std() > 0) == (scheme in ("sigma_sqrt", "cosmap"))


def test_resolution_dependent_shift_is_the_pipelines():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = dict(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0).config)
    sigmas = torch.linspace(0.99, 0.01, 9)
    for tokens in (256, 1024, 4096):
        mu = calculate_shift(tokens, config["base_image_seq_len"], config["max_image_seq_len"],
                             config["base_shift"], config["max_shift"])
        expected = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
        assert torch.allclose(shift_sigmas(sigmas, cfg(), config, tokens), expected)
    # flow_shift overrides a static shift; unset, the scheduler's own
    static = dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    assert torch.allclose(shift_sigmas(sigmas, cfg(), static, 0), 3 * sigmas / (1 + 2 * sigmas))
    assert torch.allclose(shift_sigmas(sigmas, cfg(flow_shift=1.0), static, 0), sigmas)


def test_flux_loss_is_the_scripts(tmp_path):
    from diffusers import FluxPipeline

    from engine.builtin import resolve_builtin
    from engine.families.base import resolve_source
    from engine.objective_flow import flow_loss

    c = cfg(flux_guidance_value=3.5, weighting_scheme="logit_normal")
    family = FAMILIES["flux1"]
    comps = family.load(resolve_source("builtin:tiny-flux"), c, torch.float32)
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    encode = lambda caps: family.encode_prompt(comps.tokenizers, comps.text_encoders, caps, "cpu")  # noqa: E731
    with torch.no_grad():
        ours = flow_loss({"latents": latents, "captions": ["a red square", "a blue circle"]}, comps, comps.unet,
                         encode, c, "cpu", torch.float32, torch.Generator().manual_seed(5))
        # the script, step by step, with the same draws
        gen = torch.Generator().manual_seed(5)
        noise = torch.randn(latents.shape, generator=gen)
        sigmas = draw_sigmas(c, family, dict(comps.noise_scheduler.config), 2, 16, gen, "cpu")
        s = sigmas.view(2, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        pipe = FluxPipeline(**{**dict(zip(("text_encoder", "text_encoder_2"), comps.text_encoders)),
                               "tokenizer": comps.tokenizers[0], "tokenizer_2": comps.tokenizers[1],
                               "transformer": comps.unet, "vae": comps.vae, "scheduler": comps.noise_scheduler})
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(["a red square", "a blue circle"], None,
                                                             max_sequence_length=32)
        packed = FluxPipeline._pack_latents(noisy, 2, 16, 8, 8)
        ids = FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)
        pred = comps.unet(hidden_states=packed, timestep=sigmas, guidance=torch.full((2,), 3.5),
                          pooled_projections=pooled, encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
                          img_ids=ids, return_dict=False)[0]
        pred = FluxPipeline._unpack_latents(pred, 64, 64, pipe.vae_scale_factor)
        theirs = ((pred - (noise - latents)) ** 2).mean()
    assert torch.allclose(ours, theirs, rtol=1e-5), (ours, theirs)


def test_zimage_loss_is_the_scripts():
    """train_dreambooth_lora_z_image.py's loss: the pipeline's own prompt encoding (chat template, padding dropped
    per caption, here of different lengths), t = (1000 - timestep) / 1000, latents as a list of single frames,
    the output negated."""
    from diffusers import ZImagePipeline

    from engine.families.base import resolve_source
    from engine.objective_flow import flow_loss

    c = cfg(pretrained_model_name_or_path="builtin:tiny-zimage", weighting_scheme="logit_normal")
    family = FAMILIES["zimage"]
    comps = family.load(resolve_source("builtin:tiny-zimage"), c, torch.float32)
    captions = ["a red square", "a blue circle on a wooden table"]
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    encode = lambda caps: family.encode_prompt(comps.tokenizers, comps.text_encoders, caps, "cpu")  # noqa: E731
    with torch.no_grad():
        ours = flow_loss({"latents": latents, "captions": captions}, comps, comps.unet, encode, c, "cpu",
                         torch.float32, torch.Generator().manual_seed(5))
        gen = torch.Generator().manual_seed(5)
        noise = torch.randn(latents.shape, generator=gen)
        sigmas = draw_sigmas(c, family, dict(comps.noise_scheduler.config), 2, 16, gen, "cpu")
        s = sigmas.view(2, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        pipe = ZImagePipeline(text_encoder=comps.text_encoders[0], tokenizer=comps.tokenizers[0],
                              transformer=comps.unet, vae=comps.vae, scheduler=comps.noise_scheduler)
        prompt_embeds, _ = pipe.encode_prompt(list(captions), "cpu", do_classifier_free_guidance=False,
                                              max_sequence_length=32)
        assert prompt_embeds[0].shape[0] < prompt_embeds[1].shape[0]
        timesteps = sigmas * 1000
        pred = comps.unet(list(noisy.unsqueeze(2).unbind(0)), (1000 - timesteps) / 1000, prompt_embeds,
                          return_dict=False)[0]
        pred = -torch.stack(pred).squeeze(2)
        theirs = ((pred - (noise - latents)) ** 2).mean()
    assert torch.allclose(ours, theirs, rtol=1e-5), (ours, theirs)


@pytest.mark.parametrize("family", ["flux1", "sd3", "zimage", "qwenimage"])
def test_a_full_fine_tune_is_accepted_for_every_dit_family_with_a_checkpoint_writer(family):
    """method = "full" and dreambooth_full pass for every DiT family (each writes its transformer's single file);
    an LLM text encoder is still not trained; a flow family without a writer would be refused by name."""
    from engine.families.dit import FlowFamily

    for full in ({"method": "full"}, {"method": "dreambooth", "dreambooth_full": True, "instance_prompt": "sks"}):
        assert option_problems(cfg(**full), FAMILIES[family]) == []
        keys = [k for k, _ in option_problems(cfg(**full, train_text_encoder=True), FAMILIES[family])]
        assert keys == ([] if FAMILIES[family].kohya_te_prefixes else ["train_text_encoder"])
        refused = option_problems(cfg(**full), FlowFamily())
        assert [k for k, _ in refused] == ["method"] and "not yet available" in refused[0][1]
