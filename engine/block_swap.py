"""blocks_to_swap (sd-scripts' name): the last N transformer blocks' frozen weights live off the GPU and each is
copied in for its forward and its backward, so that R = total - N blocks' weights are on the GPU at any time.

One combined block list (Flux.1: its double blocks, then its single blocks; SD3: its joint blocks), scheduled as
sd-scripts' library/custom_offloading_utils.py does. What differs, and why:
- Only frozen parameters move. Trainable ones (the PEFT LoRA layers inside the blocks) stay on the compute
  device, where the optimizer holds them and their gradients land (sd-scripts' LoRA lives outside the blocks).
- Frozen weights never change, so a block leaving the GPU is dropped (its parameters point at an empty tensor),
  not copied back: each block that ever leaves keeps one copy in offload memory (pinned on CUDA) and only
  host-to-device copies run.
- On CUDA the copies run on a side stream, ordered by events both ways; the host never waits for the GPU.
  Elsewhere they are plain synchronous copies. The "compute" and "offload" devices are parameters, so a CPU
  test can offload to a separate CPU copy and watch which blocks hold weights.

The schedule (n blocks, N swapped, R = n - N; blocks R..n-1 start offloaded, and every pass ends where it began):
- training forward: after block i < N runs, drop it and fetch block R + i (needed R blocks later);
- backward (reverse order): wait for block j before its backward; after it, if j >= R, drop j, fetch j - R;
- no-grad forward (sampling, validation loss): as training for i < N; after block i >= M = max(N, R) runs,
  drop it and fetch block i - M, so the next call finds blocks 0..R-1 on the GPU again.
"""
from __future__ import annotations

import torch

from engine.config import ConfigError

# the transformer's block lists, in execution order (Flux.1: double then single; SD3 and most DiTs: one list)
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def swap_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [b for name in BLOCK_LISTS for b in (getattr(model, name, None) or [])]


def describe(model: torch.nn.Module) -> str:
    counts = [f"{len(getattr(model, n))} {n}" for n in BLOCK_LISTS if getattr(model, n, None) is not None]
    return " + ".join(counts) or "no transformer_blocks"


class _Signal(torch.autograd.Function):
    """Identity whose backward calls `callback` first: on a block's outputs it runs before the block's backward,
    on its inputs after it (as torch's own module backward hooks are built)."""

    @staticmethod
    def forward(ctx, callback, *tensors):
        ctx.callback = callback
        return tensors

    @staticmethod
    def backward(ctx, *grads):
        ctx.callback()
        return (None, *grads)


def _signal(callback, values: list) -> list:
    """values with their grad-requiring tensors passed through one _Signal (one callback, once every one of
    their gradients is in); unchanged if none requires grad."""
    where = [k for k, v in enumerate(values) if isinstance(v, torch.Tensor) and v.requires_grad]
    if not where:
        return values
    outs = _Signal.apply(callback, *(values[k] for k in where))
    values = list(values)
    for k, out in zip(where, outs if isinstance(outs, tuple) else (outs,)):
        values[k] = out
    return values


class BlockSwap:
    def __init__(self, model: torch.nn.Module, n_swap: int, compute, offload="cpu"):
        blocks = swap_blocks(model)
        n = len(blocks)
        if not 1 <= n_swap <= n - 1:
            raise ConfigError(f"blocks_to_swap = {n_swap}, but this transformer has {n} blocks ({describe(model)}): "
                              f"swap at most {n - 1} (one block stays on the GPU), or 0 for none")
        self.model, self.blocks, self.n, self.N, self.R = model, blocks, n, n_swap, n - n_swap
        self.compute, self.offload = torch.device(compute), torch.device(offload)
        self.cuda = self.compute.type == "cuda"
        self.stream = torch.cuda.Stream(self.compute) if self.cuda else None
        self.events: dict[int, torch.cuda.Event] = {}
        self.phase = "idle"  # "train" forward, "backward" (checkpointed blocks re-run: hooks stay inert), "infer"
        self.trains = any(p.requires_grad for p in model.parameters())
        self.frozen = [[p for p in b.parameters() if not p.requires_grad] for b in blocks]
        # blocks that ever leave the GPU: the first N (dropped in the forward) and the last N (start offloaded)
        homed = set(range(self.N)) | set(range(self.R, n))
        self.home = {i: [self._home_copy(p) for p in self.frozen[i]] for i in sorted(homed)}
        self._empty: dict[torch.dtype, torch.Tensor] = {}
        self.resident = set(range(n))
        for i in range(self.R, n):
            self._drop(i)
        self.handles = [model.register_forward_pre_hook(self._on_model_forward)]
        for i, block in enumerate(blocks):
            self.handles.append(block.register_forward_pre_hook(self._pre_hook(i), with_kwargs=True))
            self.handles.append(block.register_forward_hook(self._post_hook(i)))

    # ---- moving weights
    def _home_copy(self, p: torch.Tensor) -> torch.Tensor:
        t = p.data.detach().to(self.offload, copy=True)
        return t.pin_memory() if self.cuda and self.offload.type == "cpu" else t

    def _placeholder(self, dtype) -> torch.Tensor:
        if dtype not in self._empty:
            self._empty[dtype] = torch.empty(0, dtype=dtype, device=self.compute)
        return self._empty[dtype]

    def _drop(self, i: int) -> None:
        for p in self.frozen[i]:
            p.data = self._placeholder(p.dtype)
        self.resident.discard(i)
        self.events.pop(i, None)

    def _fetch(self, i: int) -> None:
        if i in self.resident:
            return
        home = self.home[i]
        if self.cuda:
            # allocated on the compute stream (reusing what the block just dropped freed), filled on the side
            # stream once the compute stream has finished what it had queued with the old memory
            queued = torch.cuda.current_stream(self.compute).record_event()
            copies = [torch.empty_like(h, device=self.compute) for h in home]
            with torch.cuda.stream(self.stream):
                self.stream.wait_event(queued)
                for c, h in zip(copies, home):
                    c.copy_(h, non_blocking=True)
                self.events[i] = self.stream.record_event()
            for c in copies:
                c.record_stream(self.stream)
        else:
            copies = [h.to(self.compute, copy=True) for h in home]
        for p, c in zip(self.frozen[i], copies):
            p.data = c
        self.resident.add(i)

    def _wait(self, i: int) -> None:
        self._fetch(i)  # a no-op when the schedule already fetched it
        event = self.events.pop(i, None)
        if event is not None:
            torch.cuda.current_stream(self.compute).wait_event(event)

    def _move(self, out: int, into: int) -> None:
        self._drop(out)
        self._fetch(into)

    def settle(self) -> None:
        """Blocks 0..R-1 on the GPU, the rest offloaded: where every pass starts (a no-op after a complete one;
        after a forward without its backward it puts things back)."""
        for i in range(self.R, self.n):
            if i in self.resident:
                self._wait(i)
                self._drop(i)
        for i in range(self.R):
            self._fetch(i)

    # ---- hooks
    def _on_model_forward(self, module, args):
        self.settle()
        self.phase = "train" if torch.is_grad_enabled() and self.trains else "infer"

    def _pre_hook(self, i: int):
        def hook(module, args, kwargs):
            self._wait(i)
            if self.phase != "train":
                return None
            keys = list(kwargs)
            values = _signal(lambda: self._after_backward(i), [*args, *kwargs.values()])
            return tuple(values[:len(args)]), dict(zip(keys, values[len(args):]))
        return hook

    def _post_hook(self, i: int):
        def hook(module, args, output):
            if self.phase == "backward":
                return None  # a checkpointed block re-running inside the backward
            if self.phase == "infer":
                if i < self.N:
                    self._move(i, self.R + i)
                elif i >= max(self.N, self.R):
                    self._move(i, i - max(self.N, self.R))
                return None
            if i < self.N:
                self._move(i, self.R + i)
            if isinstance(output, torch.Tensor):
                return _signal(lambda: self._before_backward(i), [output])[0]
            return type(output)(_signal(lambda: self._before_backward(i), list(output)))
        return hook

    def _before_backward(self, j: int) -> None:
        self.phase = "backward"
        self._wait(j)

    def _after_backward(self, j: int) -> None:
        if j >= self.R:
            self._move(j, j - self.R)

    def remove(self) -> None:
        """Every block back on the compute device, the hooks gone."""
        for h in self.handles:
            h.remove()
        for i in range(self.n):
            self._wait(i)
        if self.cuda:
            torch.cuda.current_stream(self.compute).synchronize()


def install(model: torch.nn.Module, n_swap: int, compute, offload="cpu") -> BlockSwap:
    """Before the model moves to the compute device: the swapped blocks' weights then never land there whole."""
    return BlockSwap(model, n_swap, compute, offload)
