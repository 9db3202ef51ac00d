"""Single-file LoRA key maps of the DiT families: what ComfyUI, AUTOMATIC1111 and diffusers load for each."""
