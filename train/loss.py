"""The language-model loss without the full ``[tokens, vocab]`` logits (``train.loss_impl``).

transformers' forward projects every position onto the 151,669-token vocabulary and the loss
upcasts that to float32: about 20 GB at 32k tokens before a single activation. Here the LM
head and cross-entropy run only over the positions that have a label, ``loss_chunk_tokens``
rows at a time; or in a fused GPU kernel (liger-kernel, cut-cross-entropy) when installed.

Two plain-torch ways to run a chunk (``chunked_loss_sum``), measured with
``scripts/bench_long.py`` (8k tokens, vocabulary 151,669, 2048-row chunks):

- in place (``_LinearCrossEntropy``): the gradients are computed in the forward pass, each
  chunk's float32 logits turned into its gradient in place, so one chunk buffer is alive and
  nothing is recomputed. Needs the raw weight of a plain ``nn.Linear`` head: the usual case
  (LoRA leaves lm_head alone; full fine-tuning under DDP or ZeRO-2).
- checkpointed module call (``torch.utils.checkpoint`` per chunk): the chunk's logits are
  recomputed in backward, which holds about three chunk-sized buffers. Used when the head is
  wrapped (peft ``modules_to_save`` or an adapter on lm_head) or a ZeRO-3 shard: calling the
  module keeps the wrapper, and ZeRO-3's gathering hooks, working unchanged. Under ZeRO-3
  each call gathers the weight collectively, so every rank makes as many calls as the rank
  with the most labelled rows (one all-reduce of the chunk count per forward), and the
  checkpoint's metadata check is off: ZeRO-3 releases the re-gathered weight before that
  check would compare it (its backward gathers it again).

MoE: train/moe.py's router hooks fire inside the same forward, unchanged; transformers' own
aux loss (``output_router_logits``) is added as transformers adds it.

How it hooks in, without touching transformers' classes: ``LossHead.install`` registers a
forward hook on the inner ``Qwen3VLModel`` (``model.model``, reached through peft), the module
that returns the final hidden states. ``LossHead.forward`` calls the wrapped model (plain,
DDP or the DeepSpeed engine, so their forward logic runs as before) with ``labels=None`` and
``logits_to_keep`` = no position (transformers then projects nothing), and the hook computes
the loss inside that call from the hidden states and the labels handed to it. The module tree,
parameter names, checkpoints and ``save_pretrained`` are untouched.

Normalisation is transformers' ``ForCausalLMLoss``: labels shifted by one over the whole row
(before any split), ``-100`` ignored, the sum divided by ``num_items_in_batch`` (or the mean
over label tokens when it is None). Under sequence parallelism each rank sums its shard's
tokens; see train/sequence_parallel.py.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
IMPLS = ("auto", "hf", "chunked", "liger", "cce")
# The package each fused implementation needs, and the pip name that installs it.
FUSED = {"liger": ("liger_kernel", "liger-kernel"), "cce": ("cut_cross_entropy", "cut-cross-entropy")}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_loss_impl(impl: str, device: torch.device, zero3: bool = False,
                      plain_head: bool = True) -> str:
    """``auto`` -> a fused kernel on CUDA when installed (liger first) and the head is a plain
    ``nn.Linear`` with its whole weight (no peft wrapper, not under ZeRO-3), else ``chunked``;
    an explicit fused choice that cannot run here is an error naming the fix."""
    if impl not in IMPLS:
        raise ValueError(f"train.loss_impl={impl!r}: choose from {list(IMPLS)}")
    if impl == "auto":
        if device.type == "cuda" and not zero3 and plain_head:
            for name, (module, _) in FUSED.items():
                if installed(module):
                    return name
        return "chunked"
    if impl in FUSED:
        module, pip_name = FUSED[impl]
        if not installed(module):
            raise ValueError(f"train.loss_impl={impl} needs the {pip_name} package: "
                             f"pip install {pip_name} (CUDA only), or set train.loss_impl=chunked")
        if device.type != "cuda":
            raise ValueError(f"train.loss_impl={impl} runs Triton kernels on CUDA only; this run is "
                             f"on {device.type}: set train.loss_impl=chunked")
        if zero3:
            raise ValueError(f"train.loss_impl={impl} reads the raw lm_head weight, which ZeRO-3 "
                             f"keeps partitioned: set train.loss_impl=chunked under ZeRO-3")
        if not plain_head:
            raise ValueError(f"train.loss_impl={impl} needs a plain lm_head; this one is wrapped "
                             f"by peft (lm_head in lora.modules_to_save or an adapter on it): set "
                             f"train.loss_impl=chunked")
    return impl


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Position t's target is token t+1; the last position has none (-100)."""
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of cross_entropy(hidden @ weight.T, targets), every target valid. The
    gradients are computed in the forward pass, chunk by chunk, with the chunk's logits turned
    into its gradient in place (softmax minus one-hot): one [chunk, vocab] float32 buffer is
    alive at a time and nothing is recomputed. Backward only scales the stored gradients. The
    head's weight gradient (full fine-tuning) is summed in float32 over the chunks, so a
    bfloat16 head briefly holds a float32 copy of its gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = (h @ weight.T).float()
            rows = torch.arange(h.shape[0], device=h.device)
            target_logit = logits[rows, t]
            peak = logits.amax(-1, keepdim=True)
            sum_exp = logits.sub_(peak).exp_().sum(-1, keepdim=True)
            total += (sum_exp.log() + peak).sum() - target_logit.sum()
            grad = logits.div_(sum_exp)  # softmax, in place
            grad[rows, t] -= 1.0
            grad = grad.to(weight.dtype)
            if want_h:
                grad_h[start:start + chunk] = grad @ weight
            if want_w:
                grad_w += grad.T.float() @ h.float()
            del logits, grad  # before the next chunk's buffer is made
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if want_w else None)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_total if grad_h is not None else None,
                grad_w * grad_total if grad_w is not None else None, None, None)


def plain_weight(head: torch.nn.Module) -> torch.Tensor | None:
    """The head's weight when it is a bias-free ``nn.Linear`` holding its whole weight (not a
    peft wrapper, not a ZeRO-3 shard): then the in-forward gradient path applies."""
    if type(head) is not torch.nn.Linear or head.bias is not None or hasattr(head.weight, "ds_id"):
        return None
    return head.weight


def chunked_loss_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                     chunk_tokens: int, method: str = "auto") -> torch.Tensor:
    """Sum of the cross-entropy over positions with a label, ``chunk_tokens`` rows of logits at
    a time. ``hidden``: (..., H); ``targets``: (...) already shifted. Rows without a label
    (prompt, visual tokens, padding) are never projected.

    ``method``: ``inplace`` (``_LinearCrossEntropy``: gradients made in the forward pass, one
    float32 logits buffer alive; needs a plain ``nn.Linear`` head), ``checkpoint`` (each chunk
    under ``torch.utils.checkpoint``, calling the head module, so LoRA / modules_to_save on
    lm_head and ZeRO-3's gathering work; its backward holds about three chunk-sized buffers),
    ``auto``: inplace where it applies."""
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    sharded = any(hasattr(p, "ds_id") for p in head.parameters())
    if keep.numel() == 0 and not sharded:
        # Still a graph through the head and hidden states: DDP / ZeRO expect every parameter
        # used in the forward to get a (here zero) gradient.
        return head(hidden[:0]).float().sum()
    hidden, targets = hidden.index_select(0, keep), targets.index_select(0, keep)
    weight = plain_weight(head) if method != "checkpoint" else None
    if method == "inplace" and weight is None:
        raise ValueError(f"the in-place chunked loss needs a plain nn.Linear head, got "
                         f"{type(head).__name__}")
    if weight is not None:
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens)
    chunks = -(-hidden.shape[0] // chunk_tokens)
    if sharded:
        # ZeRO-3 gathers the head's weight collectively at every call (forward, and the
        # recomputation in backward): every rank makes as many calls as the rank with the most
        # label rows, the surplus ones on no rows.
        count = torch.tensor([chunks], device=hidden.device)
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        chunks = int(count)
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(chunks):
        rows = slice(i * chunk_tokens, (i + 1) * chunk_tokens)
        total = total + checkpoint(_chunk_loss, head, hidden[rows], targets[rows],
                                   use_reentrant=False,
                                   determinism_check="none" if sharded else "default")
    return total


def fused_loss_sum(impl: str, head: torch.nn.Module, hidden: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    """The same sum through liger-kernel's or cut-cross-entropy's fused linear cross-entropy
    (CUDA; they need the raw head weight, so a LoRA / modules_to_save wrapper on lm_head is
    refused - use chunked for those)."""
    weight = getattr(head, "weight", None)
    if not isinstance(head, torch.nn.Linear) or weight is None:
        raise ValueError(f"train.loss_impl={impl} needs a plain nn.Linear lm_head, this one is "
                         f"{type(head).__name__} (adapter or modules_to_save on lm_head): set "
                         f"train.loss_impl=chunked")
    if hasattr(weight, "ds_id"):
        raise ValueError(f"train.loss_impl={impl} reads the raw lm_head weight, which ZeRO-3 keeps "
                         f"partitioned: set train.loss_impl=chunked under ZeRO-3")
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if impl == "liger":
        from liger_kernel.transformers.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyLoss,
        )

        out = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")(
            weight, hidden, targets)
        return (out[0] if isinstance(out, tuple) else out).float()  # newer releases add z_loss
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE_INDEX,
                                reduction="sum").float()


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers ``*ForConditionalGeneration`` inside a peft model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "peft_config") else model


class LossHead:
    """The LM loss of ``train.loss_impl`` chunked / liger / cce, computed inside the model's
    forward from the final hidden states (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, impl: str, chunk_tokens: int, shard=None):
        self.hf = hf_model(model)
        self.impl, self.chunk_tokens, self.shard = impl, chunk_tokens, shard
        self._pending: tuple | None = None
        self._loss: torch.Tensor | None = None
        self.handle = self.hf.model.register_forward_hook(self._on_hidden)

    @classmethod
    def install(cls, model, impl: str, chunk_tokens: int, device: torch.device,
                shard=None, zero3: bool = False) -> LossHead | None:
        """The head for ``impl`` on ``model`` (before DDP / DeepSpeed wrap it); None for ``hf``."""
        plain = model is None or type(hf_model(model).lm_head) is torch.nn.Linear
        impl = resolve_loss_impl(impl, device, zero3, plain)
        if impl == "hf":
            if shard is not None:
                raise ValueError("train.loss_impl=hf projects each rank's shard with transformers' "
                                 "own label shift, which is wrong under sequence parallelism: set "
                                 "train.loss_impl=chunked (or auto)")
            return None
        return cls(model, impl, chunk_tokens, shard)

    def forward(self, model, batch: dict):
        """``model(**batch)`` (the wrapped model) with the loss computed here; returns the
        model's output with ``.loss`` set (and ``.logits`` empty)."""
        batch = dict(batch)
        labels = batch.pop("labels")
        num_items = batch.pop("num_items_in_batch", None)
        self._pending, self._loss = (labels, num_items), None
        try:
            out = model(**batch, labels=None, use_cache=False,
                        logits_to_keep=torch.empty(0, dtype=torch.long, device=labels.device))
        finally:
            self._pending = None
        loss, self._loss = self._loss, None
        if loss is None:
            raise RuntimeError("the loss hook on the language model did not run in this forward")
        aux = getattr(out, "aux_loss", None)
        if aux is not None:  # transformers' own MoE aux loss (output_router_logits), as it adds it
            loss = loss + self.hf.config.text_config.router_aux_loss_coef * aux.to(loss.device)
        out.loss = loss
        return out

    def _on_hidden(self, module, args, output):
        if self._pending is None:
            return  # a forward that is not ours (eval, generation)
        labels, num_items = self._pending
        hidden = output[0]
        targets = shift_labels(labels.to(hidden.device))
        if self.shard is not None:
            targets = self.shard.labels(targets)
        head = self.hf.lm_head
        if self.impl == "chunked":
            total = chunked_loss_sum(head, hidden, targets, self.chunk_tokens)
        else:
            total = fused_loss_sum(self.impl, head, hidden, targets)
        if num_items is None:
            count = (targets != IGNORE_INDEX).sum()
            if self.shard is not None:
                count = self.shard.all_reduce(count)
            num_items = count  # the mean over label tokens (nan when there are none, as transformers)
        elif torch.is_tensor(num_items):
            num_items = num_items.to(total.device)
        self._loss = total / num_items
        return
