"""MoE router losses and expert-load statistics for Qwen3-VL-MoE, captured by forward hooks.

Why our own and not transformers' (``output_router_logits=True``), checked against 5.23:

- transformers#45120 (softmax applied twice) is fixed in 5.23: ``Qwen3VLMoeTextTopKRouter``
  returns raw logits first and ``load_balancing_loss_func`` applies one softmax.
- But ``load_balancing_loss_func`` pools every layer's tokens before multiplying
  ``f_e * P_e``, so an imbalance in one layer can be cancelled by the opposite imbalance in
  another (QwenLM/Qwen3#1418). Each layer routes to its own experts, so we compute the loss per
  layer and average over layers.
- Its ``f_e`` is count / tokens, which sums to top_k, so its value at perfect balance is
  top_k. Ours uses the fraction of (token, top-k slot) assignments (sums to 1): 1 at balance,
  as Switch Transformer and Megatron-LM. For one layer, ours == theirs / top_k, so the same
  coefficient pushes top_k times less here than there.
- Capturing with hooks costs nothing when only load statistics are wanted, keeps transformers'
  own aux loss out of ``.loss`` (``attach`` switches ``output_router_logits`` off), and works
  the same on the plain model, under peft (LoRA, also ``target_parameters`` on experts), DDP,
  ZeRO-3 (hooks read router outputs, never partitioned weights) and after DeepSpeed AutoEP
  replaced the MoE blocks (its router's ``gate`` Linear gives the logits).

Per layer, over the real tokens t of one forward (padding excluded; a packed row has none),
with E experts, top-k routing and router logits z_t::

    f_e  = #{(t, slot) routed to e} / (T * k)       P_e = mean_t softmax(z_t)_e
    aux  = E * sum_e f_e * P_e                      z   = mean_t logsumexp(z_t) ** 2

Both are averaged over MoE layers. Only P_e and z carry gradient (f_e is a count).

Normalisation with gradient accumulation and ranks: ``loss()`` is the value of ONE forward
(one micro-batch's own tokens: a micro-batch-level balance loss; nothing is all-reduced).
The trainer adds ``loss().total / grad_accum`` to each micro-batch's LM loss; DDP / ZeRO then
average gradients over ranks, so the step optimises the mean over all micro-batches of all
ranks of the per-micro-batch router loss (as transformers' Trainer does), while the LM loss
stays the mean over every label token of the global batch. If DeepSpeed's engine already
divides by ``gradient_accumulation_steps`` in ``backward``, do not divide again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from train.qwen3_vl.names import LANGUAGE_MODEL, MLP

# The MoE block of a decoder layer, under any prefix (peft adds ``base_model.model.``).
MOE_BLOCK = re.compile(rf"(?P<text>(?:.*\.)?{re.escape(LANGUAGE_MODEL)})\.layers\.(?P<layer>\d+)\.{MLP}")


# ----------------------------------------------------------------------------- formulas


def group_sum(t: torch.Tensor, group, differentiable: bool = False) -> torch.Tensor:
    """``t`` summed over a sequence-parallel group (``t`` itself without one). Differentiable:
    the backward sums the gradients too, so each rank's loss, which holds the group's total,
    sends every rank's tokens their gradient (once per rank: the ranks' average restores it)."""
    if group is None:
        return t
    if differentiable:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t, group=group)
    t = t.clone()
    torch.distributed.all_reduce(t, group=group)
    return t


def load_balancing_loss(logits: torch.Tensor, expert_index: torch.Tensor,
                        token_mask: torch.Tensor | None = None, group=None) -> torch.Tensor:
    """``E * sum_e f_e * P_e`` for one layer (see the module docstring).

    logits: (T, E) raw router logits; expert_index: (T, k) experts each token was routed to;
    token_mask: (T,) true for real tokens, None when all are real. ``group``: the
    sequence-parallel group whose ranks hold the other slices of these rows: the statistics
    are over the whole sequence, as without the split.
    """
    num_tokens, num_experts = logits.shape
    probs = torch.softmax(logits.float(), dim=-1)
    weight = (torch.ones(num_tokens, device=logits.device) if token_mask is None
              else token_mask.to(device=logits.device, dtype=torch.float32))
    real = group_sum(weight.sum(), group).clamp(min=1.0)
    top_k = expert_index.shape[-1]
    assigned = group_sum(torch.zeros(num_experts, device=logits.device).scatter_add_(
        0, expert_index.reshape(-1), weight.repeat_interleave(top_k)), group)
    fraction = assigned / (real * top_k)  # f_e: sums to 1 over experts
    mean_prob = group_sum((probs * weight[:, None]).sum(0), group, differentiable=True) / real
    return num_experts * (fraction * mean_prob).sum()


def router_z_loss(logits: torch.Tensor, token_mask: torch.Tensor | None = None,
                  group=None) -> torch.Tensor:
    """Mean over real tokens of ``logsumexp(logits) ** 2`` for one layer (ST-MoE's z-loss);
    ``group`` as for ``load_balancing_loss``."""
    z = torch.logsumexp(logits.float(), dim=-1) ** 2
    if token_mask is None and group is None:
        return z.mean()
    weight = (torch.ones_like(z) if token_mask is None
              else token_mask.to(device=logits.device, dtype=torch.float32))
    return (group_sum((z * weight).sum(), group, differentiable=True)
            / group_sum(weight.sum(), group).clamp(min=1.0))


def load_summary(counts: torch.Tensor, layers: list[int] | None = None) -> dict[str, float]:
    """Loggable scalars from (layers, experts) assignment counts.

    Per layer the max / mean expert load (1.0 is perfectly balanced, E means one expert took
    everything) and the number of experts that got no token; then the worst layer's ratio.
    """
    counts = counts.double()
    layers = layers if layers is not None else list(range(counts.shape[0]))
    out: dict[str, float] = {}
    ratios = []
    for row, layer in zip(counts, layers):
        mean = row.mean().item()
        ratio = row.max().item() / mean if mean > 0 else 0.0
        ratios.append(ratio)
        out[f"moe/load_max_over_mean/layer_{layer}"] = ratio
        out[f"moe/idle_experts/layer_{layer}"] = float((row == 0).sum().item())
    if ratios:
        out["moe/load_max_over_mean/worst"] = max(ratios)
    return out


# ----------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class RouterSite:
    """Where one MoE layer's router logits and routing choices can be read.

    ``logits_module``'s output (``[0]`` of a tuple) is the raw (T, E) logits;
    ``choice_module``'s output ``[choice_index]`` is the (T, k) chosen experts. For
    transformers' router both are the ``mlp.gate`` module; after AutoEP they are
    ``mlp.router.gate`` (an ``nn.Linear``) and ``mlp.router``.
    """
    layer: int
    text_model: nn.Module
    logits_module: nn.Module
    choice_module: nn.Module
    choice_index: int
    num_experts: int
    top_k: int


def find_router_sites(model: nn.Module) -> list[RouterSite]:
    """Every MoE router of the language model, by layer; [] for a dense model."""
    modules = dict(model.named_modules())
    sites = []
    for name, block in modules.items():
        match = MOE_BLOCK.fullmatch(name)
        if match is None:
            continue
        text_model, layer = modules[match["text"]], int(match["layer"])
        gate = getattr(block, "gate", None)
        if getattr(block, "_is_autoep_layer", False):  # DeepSpeed AutoEPMoELayer
            router = block.router  # TokenChoiceTopKRouter -> (scores, experts, counts)
            sites.append(RouterSite(layer, text_model, router.gate, router, 1,
                                    block.num_experts, block.top_k))
        elif gate is not None and hasattr(gate, "top_k") and hasattr(gate, "num_experts"):
            # transformers' TopKRouter -> (logits, scores, experts)
            sites.append(RouterSite(layer, text_model, gate, gate, 2, gate.num_experts, gate.top_k))
    return sorted(sites, key=lambda s: s.layer)


# ----------------------------------------------------------------------------- capture


@dataclass
class RouterLossOutput:
    total: torch.Tensor  # aux_coef * aux + z_coef * z, with gradient; 0 when both coefs are 0
    aux: float | None  # unweighted, per-layer mean (None when logits were not kept)
    z: float | None


class _Forward:
    """What the routers produced during one training forward of the language model."""

    def __init__(self, token_mask: torch.Tensor | None):
        self.token_mask = token_mask
        self.logits: dict[int, torch.Tensor] = {}
        self.choices: dict[int, torch.Tensor] = {}


def _padding_mask(args, kwargs) -> torch.Tensor | None:
    """The (B*S,) real-token mask from the language model's ``attention_mask`` argument."""
    mask = kwargs.get("attention_mask")
    if mask is None:
        return None
    if not torch.is_tensor(mask) or mask.dim() != 2:
        raise ValueError("MoE router losses need a 2-D (batch, seq) padding attention_mask or "
                         f"none (packed rows); the language model got {type(mask).__name__} "
                         f"of shape {getattr(mask, 'shape', None)}")
    return mask.reshape(-1).bool()


class RouterLosses:
    """Load-balancing / z losses and expert-load counts of a Qwen3-VL-MoE model.

    Usage per micro-batch (the model in ``train()`` mode; eval forwards are not captured)::

        router = RouterLosses.attach(model, cfg.moe)   # once the model is final (see attach)
        out = model(**batch)                            # padding taken from attention_mask
        r = router.loss()                               # this forward's router loss
        (out.loss + r.total / grad_accum).backward()
        ...
        counts = router.pop_load(all_reduce=True)       # (layers, experts), at log steps
        log(load_summary(counts, router.layers))
    """

    def __init__(self, sites: list[RouterSite], aux_coef: float, z_coef: float, count_load: bool):
        self.sites, self.aux_coef, self.z_coef = sites, aux_coef, z_coef
        self.count_load = count_load
        self.keep_logits = aux_coef > 0 or z_coef > 0
        self.layers = [s.layer for s in sites]
        self.num_experts = sites[0].num_experts
        self._row = {s.layer: i for i, s in enumerate(sites)}
        self._current: _Forward | None = None
        self._done: list[_Forward] = []
        self._load: torch.Tensor | None = None
        self._device: torch.device | None = None  # where routing happens (set by the first forward)
        self._handles: list = []
        self.group = None  # the sequence-parallel group, when the rows are split (attach)
        self._hook()

    @classmethod
    def attach(cls, model: nn.Module, moe_cfg, group=None) -> "RouterLosses | None":
        """Hooks on ``model``'s routers; None for a dense model or when nothing is asked for.

        ``moe_cfg`` is a ``train.config.MoeConfig``; ``aux_loss_coef=None`` takes the
        checkpoint's ``text_config.router_aux_loss_coef``. Switches off transformers' own aux
        loss (``output_router_logits``) so it is not added to ``.loss`` a second time.

        Attach to the final module tree: after peft and after ``deepspeed.initialize`` (AutoEP
        replaces the MoE blocks there; hooks on the replaced routers would never fire). Before
        or after DDP wrapping makes no difference. ``group``: the sequence-parallel group
        (each rank's routers see a slice of the rows; the losses are over the whole rows).
        """
        sites = find_router_sites(model)
        config = getattr(model, "config", None)
        text_config = getattr(config, "text_config", config)
        if not sites:
            if getattr(text_config, "num_experts", 0):
                raise ValueError(f"{type(model).__name__} has num_experts but no router matched "
                                 f"'{MOE_BLOCK.pattern}.gate' (or an AutoEP layer's router): "
                                 "train/moe.py find_router_sites needs this model's layout")
            if moe_cfg.aux_loss_coef or moe_cfg.z_loss_coef:
                raise ValueError("moe.aux_loss_coef / moe.z_loss_coef are set but the model is "
                                 "dense (no MoE router): remove them")
            return None
        aux_coef = moe_cfg.aux_loss_coef
        if aux_coef is None:
            aux_coef = float(getattr(text_config, "router_aux_loss_coef", 0.0) or 0.0)
        if text_config is not None and getattr(text_config, "output_router_logits", False):
            text_config.output_router_logits = False
        if aux_coef == 0 and moe_cfg.z_loss_coef == 0 and not moe_cfg.log_expert_load:
            return None
        losses = cls(sites, aux_coef, moe_cfg.z_loss_coef, moe_cfg.log_expert_load)
        losses.group = group
        return losses

    # -- hooks

    def _hook(self) -> None:
        text_models = {id(s.text_model): s.text_model for s in self.sites}
        add = self._handles.append
        for text_model in text_models.values():
            add(text_model.register_forward_pre_hook(self._begin, with_kwargs=True))
            add(text_model.register_forward_hook(self._end))
        for site in self.sites:
            if site.logits_module is site.choice_module:
                add(site.choice_module.register_forward_hook(self._on_router(site)))
            else:
                add(site.logits_module.register_forward_hook(self._on_logits(site)))
                add(site.choice_module.register_forward_hook(self._on_choice(site)))

    def _begin(self, module, args, kwargs):
        # Only training forwards count; gradient-checkpoint recomputation runs decoder layers
        # again during backward, outside this forward, and is therefore not captured twice.
        self._current = _Forward(_padding_mask(args, kwargs)) if module.training else None

    def _end(self, module, args, output):
        if self._current is not None and self.keep_logits:  # load-only: nothing to keep
            self._done.append(self._current)
        self._current = None

    def _on_router(self, site: RouterSite):
        def hook(module, args, output):
            if self._current is not None:
                self._record(site, output[0], output[site.choice_index])
        return hook

    def _on_logits(self, site: RouterSite):
        def hook(module, args, output):
            # Inside the router's forward, before its own hook: keep until the choice arrives.
            # (AutoEP may call the gate again later to return logits; that call finds the layer
            # already recorded and is ignored.)
            if self._current is not None and site.layer not in self._current.choices:
                self._current.logits[site.layer] = output[0] if isinstance(output, tuple) else output
        return hook

    def _on_choice(self, site: RouterSite):
        def hook(module, args, output):
            if self._current is not None:
                self._record(site, self._current.logits.pop(site.layer), output[site.choice_index])
        return hook

    def _record(self, site: RouterSite, logits: torch.Tensor, choices: torch.Tensor) -> None:
        fwd = self._current
        mask = fwd.token_mask
        if mask is not None and mask.numel() != logits.shape[0]:
            raise ValueError(f"layer {site.layer}: the router saw {logits.shape[0]} tokens but the "
                             f"attention_mask has {mask.numel()} positions")
        if mask is not None and mask.device != logits.device:
            fwd.token_mask = mask = mask.to(logits.device)
        if self.keep_logits:
            fwd.logits[site.layer] = logits
            fwd.choices[site.layer] = choices.detach()
        else:
            fwd.choices[site.layer] = choices[:0]  # marks the layer seen; nothing kept
        if self.count_load:
            with torch.no_grad():
                self._add_load(site, choices, mask)

    def _add_load(self, site: RouterSite, choices: torch.Tensor, mask: torch.Tensor | None) -> None:
        if self._load is None:
            self._device = choices.device
            self._load = torch.zeros(len(self.sites), self.num_experts, dtype=torch.long,
                                     device=choices.device)
        weight = (torch.ones(choices.numel(), dtype=torch.long, device=choices.device)
                  if mask is None else mask.long().repeat_interleave(choices.shape[-1]))
        # scatter_add rather than bincount: no device-to-host sync on GPU
        self._load[self._row[site.layer]].scatter_add_(0, choices.reshape(-1).long(), weight)

    # -- results

    def loss(self) -> RouterLossOutput:
        """Router loss of the training forward(s) since the last call (mean over forwards).

        ``total`` = aux_coef * aux + z_coef * z, to add to the LM loss (divided by grad_accum;
        see the module docstring). Raises if no training forward was captured. With both
        coefficients 0 it is a constant 0 (only load is counted) and need not be called.
        """
        if not self.keep_logits:  # both coefficients are 0: load statistics only
            return RouterLossOutput(torch.zeros(()), None, None)
        done, self._done = self._done, []
        if not done:
            raise RuntimeError("RouterLosses.loss(): no training forward since the last call "
                               "(the model must be in train() mode and run a forward first)")
        aux_terms, z_terms = [], []
        for fwd in done:
            missing = [s.layer for s in self.sites if s.layer not in fwd.logits]
            if missing:
                raise RuntimeError(f"router hooks saw no output for MoE layers {missing}: attach "
                                   "RouterLosses to the final model (after peft and after "
                                   "deepspeed.initialize, which may replace MoE blocks)")
            aux_terms += [load_balancing_loss(fwd.logits[s.layer], fwd.choices[s.layer],
                                              fwd.token_mask, self.group) for s in self.sites]
            z_terms += [router_z_loss(fwd.logits[s.layer], fwd.token_mask, self.group)
                        for s in self.sites]
        aux, z = torch.stack(aux_terms).mean(), torch.stack(z_terms).mean()
        total = self.aux_coef * aux + self.z_coef * z
        return RouterLossOutput(total, aux.item(), z.item())

    def pop_load(self, all_reduce: bool = False) -> torch.Tensor:
        """(MoE layers, experts) token-assignment counts since the last call, then reset.

        Row i is layer ``self.layers[i]``; each real token adds top_k assignments. With
        ``all_reduce`` (every rank must call it) the counts are summed over ranks.
        """
        load = self._load
        if load is None:  # no training forward since the last call (still joins the all-reduce)
            device = self._device or self.sites[0].logits_module.weight.device
            load = torch.zeros(len(self.sites), self.num_experts, dtype=torch.long, device=device)
        self._load = None
        if all_reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)
        return load.cpu()

    def detach(self) -> None:
        """Remove every hook (the model then runs as if never attached)."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._current, self._done = [], None, []
