"""Sampling during and after training: sampler names (samplers), sd-scripts' prompt-line syntax (prompts), the
settings recorded with each image (metadata), autocast that keeps the VAE in its own dtype (autocast), and the
validation images and loss the training loop makes (validation, validation_loss)."""
