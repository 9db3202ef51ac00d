"""LoRA tools: inspect, convert, resize, merge, extract, publish and X/Y grids, as a library and as
`python -m engine.tools <verb> ...` (engine/tools/__main__.py). The studio's Utilities tab calls the same
functions.

Every tool reads a LoRA through `lora_file.read` (any supported layout into one internal form) and writes
through `lora_file.write`, atomically. Bad input raises ToolError, whose message is one line naming the
file or value and what to do; the CLI prints it and exits 2.
"""
from __future__ import annotations


class ToolError(ValueError):
    """A one-line message for the user: what is wrong with which input, and what to do."""
