"""Training methods: what is trainable and how it is saved. Only LoRA so far."""
