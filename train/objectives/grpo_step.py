"""GRPO inside the training loop: how a micro-batch of prompts becomes a loss.

With ``train.objective: grpo`` the loop reads a ``data.prompts.PromptCorpus`` through the same
sampler (resume, mixture, skipping bad prompts unchanged), batches with
``data.prompts.PromptCollator`` (B unpadded prompts, ``batch["prompts"]``) and asks ``GrpoStep``
for each micro-batch's loss, as it asks ``DpoStep``:

1. rollouts (``rollout.py``): ``G`` completions per prompt sampled from the current policy,
   and their ``B*G`` right-padded training rows (labels on completion tokens);
2. rewards: ``rewards.RewardSet`` (the eval harness's scorers) per completion against its
   prompt's ``Sample``; a reward that raises fails that completion for that reward (its part
   is 0, the error is recorded), never the step;
3. group advantages (``grpo.group_advantages``; scaled by the group's std except Dr. GRPO);
4. policy log-probs: one forward of the wrapped model through ``forward`` (the engine's: DDP /
   DeepSpeed see an ordinary forward) on the rows, logits divided by the sampling temperature
   (the distribution the completions were drawn from, as TRL does);
5. old log-probs = the same values detached: one optimisation step per rollout batch, so the
   importance ratio is exactly 1 and the clip never binds (``clip_ratio`` logs 0); the clip
   acts only if rollouts are ever reused for several updates (not done here);
6. KL (``kl_coef`` > 0): k3 estimate against the reference: the policy with its adapters
   disabled (LoRA, no second copy) or a frozen copy of the base (``reference``, full
   fine-tuning), under no_grad;
7. ``grpo.policy_loss`` in the configured style, scaled for accumulation and ranks.

Scaling: the loss of a micro-batch of B prompts is multiplied by ``B / units_per_rank`` where
``units_per_rank`` = the global batch's prompts / world size (as ``DpoStep`` does with pairs):
the micro-batches' losses add up, and DDP / ZeRO's gradient average over ranks makes it, the
mean over every completion of the global batch for ``grpo``, ``gspo`` and ``dr_grpo`` (whose
per-completion normaliser is the constant ``max_new_tokens``). For ``dapo`` (one token mean)
each micro-batch's token mean is weighted by its prompts: exactly DAPO's global token mean only
with one micro-batch on one rank (the global count of completion tokens is not known before
every micro-batch has generated).

Rollout records (prompt id, completion, reward parts, total, advantage, errors) accumulate in
``records``; the loop drains them with ``take_records()`` and writes them (``rollouts.jsonl``).
"""

from __future__ import annotations

import json
import time

import torch

from data.prompts import PROMPTS, PromptBatch, PromptCollator, prompts_in  # noqa: F401
from train.config import GrpoConfig, check_grpo  # noqa: F401  (GrpoConfig re-exported)
from train.objectives.dpo import NOT_MODEL_INPUTS
from train.objectives.grpo import STYLES, group_advantages, group_stats, policy_loss
from train.objectives.logprobs import token_logps
from train.objectives.rewards import RewardSet
from train.objectives.rollout import Rollouts, generate_rollouts, suppressed_token_ids


class GrpoStep:
    """The GRPO loss of one micro-batch of prompts. ``processor``: the checkpoint's (tokenizer
    for decoding and padding; its chat template says whether replies open inside ``<think>``).
    ``reference``: a frozen model for full fine-tuning with ``kl_coef`` > 0, or None (LoRA: the
    policy with adapters disabled; or no KL). ``synced_gpus``: generation keeps all ranks in
    step (needed under ZeRO-3 with several ranks). ``engine``: a ``rollout_vllm.VllmRollouts``
    that samples instead of ``generate`` (``grpo.rollout_backend: vllm``); the loop calls
    ``weights_changed`` after each update so it is sent the new weights before sampling."""

    def __init__(self, cfg, processor, reference: torch.nn.Module | None = None,
                 synced_gpus: bool = False, engine=None):
        from eval.metrics import prompt_opens_thinking

        check_grpo(cfg)
        self.cfg, self.reference, self.synced_gpus = cfg, reference, synced_gpus
        self.engine, self.engine_stale = engine, True  # the engine starts from model.path
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.rewards = RewardSet(dict(cfg.rewards), prompt_opens_thinking(processor))
        self.suppressed = torch.tensor(suppressed_token_ids(self.tokenizer), dtype=torch.long)
        self.records: list[dict] = []
        self.last_rows: dict | None = None  # the last micro-batch's training rows (tokens, FLOPs)

    def take_records(self) -> list[dict]:
        """The rollout records gathered since the last call (and forget them)."""
        records, self.records = self.records, []
        return records

    def weights_changed(self) -> None:
        """The policy was updated: the vLLM engine needs its weights before the next rollout."""
        self.engine_stale = True

    # --- pieces -------------------------------------------------------------------------------

    def rollouts(self, policy: torch.nn.Module, prompts: PromptBatch,
                 seed: int | None = None) -> Rollouts:
        """``seed``: sample from a generator state of its own (the global RNG is left as it
        was), so a resumed run draws the same completions as an uninterrupted one whatever else
        consumed random numbers since the checkpoint; None: the global RNG as it stands."""
        if self.engine is not None:
            if self.engine_stale:
                self.engine.sync(policy)
                self.engine_stale = False
            return self.engine.generate(prompts, 0 if seed is None else seed)
        if seed is None:
            return generate_rollouts(policy, prompts.examples, self.cfg, self.tokenizer,
                                     self.synced_gpus)
        device = next(policy.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return generate_rollouts(policy, prompts.examples, self.cfg, self.tokenizer,
                                     self.synced_gpus)

    def score(self, rollouts: Rollouts, prompts: PromptBatch) -> list:
        """One ``RewardOutcome`` per completion (never raises)."""
        g = rollouts.group_size
        return [self.rewards.score(text, prompts.samples[i // g])
                for i, text in enumerate(rollouts.texts)]

    def token_logps(self, logits: torch.Tensor, labels: torch.Tensor):
        """Per-token log-probs of the sampling distribution: logits / temperature, the
        suppressed visual tokens at -inf (``rollout.VISUAL_TOKENS``)."""
        scaled = logits / float(self.cfg.temperature)  # a new tensor: filled in place
        scaled.index_fill_(-1, self.suppressed.to(scaled.device), float("-inf"))
        return token_logps(scaled, labels)

    @torch.no_grad()
    def reference_logps(self, policy: torch.nn.Module, rows: dict) -> torch.Tensor:
        """Per-token log-probs ``(rows, L-1)`` of the completions under the reference."""
        inputs = {k: v for k, v in rows.items() if k not in NOT_MODEL_INPUTS}
        if self.reference is not None:
            logits = self.reference(**inputs, use_cache=False).logits
        else:
            if not hasattr(policy, "disable_adapter"):
                raise ValueError(f"grpo kl_coef > 0 needs a reference: {type(policy).__name__} "
                                 f"is not a peft model (LoRA) and no frozen reference was given")
            with policy.disable_adapter():
                logits = policy(**inputs, use_cache=False).logits
        return self.token_logps(logits, rows["labels"])[0]

    # --- the loss -------------------------------------------------------------------------------

    def loss(self, forward, policy: torch.nn.Module, batch: dict, units_per_rank: float,
             seed: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to backward, stats). ``batch``: a ``PromptCollator`` batch (``batch["prompts"]``);
        ``units_per_rank``: the global batch's prompts divided by the world size (see the module
        doc); ``policy``: the unwrapped model that generates (and, with LoRA, is the reference
        with adapters off)."""
        cfg, prompts = self.cfg, batch[PROMPTS]
        started = time.perf_counter()
        rollouts = self.rollouts(policy, prompts, seed)
        seconds = time.perf_counter() - started
        outcomes = self.score(rollouts, prompts)
        rewards = torch.tensor([o.total for o in outcomes], dtype=torch.float32)
        advantages = group_advantages(rewards, rollouts.group_size, STYLES[cfg.style]["scale"])

        device = next(policy.parameters()).device
        rows = {k: v.to(device) for k, v in rollouts.rows.items()}
        self.last_rows = rows
        logits = forward({k: v for k, v in rows.items() if k not in NOT_MODEL_INPUTS}).logits
        logps, mask = self.token_logps(logits, rows["labels"])
        ref = self.reference_logps(policy, rows) if cfg.kl_coef else None
        loss, pstats = policy_loss(logps, logps.detach(), advantages.to(device), mask,
                                   style=cfg.style, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                                   kl_coef=cfg.kl_coef, ref_logps=ref,
                                   max_tokens=int(cfg.max_new_tokens))

        self.records += rollout_records(prompts, rollouts, outcomes, advantages)
        stats = reward_stats(rewards, outcomes, rollouts)
        stats.update({"kl": pstats["kl"], "clip_ratio": pstats["clip_ratio"],
                      "completion_length": pstats["completion_length"],
                      "rollout/samples_per_s": len(rollouts) / max(seconds, 1e-9)})
        return loss * (len(prompts) / units_per_rank), stats


def reward_stats(rewards: torch.Tensor, outcomes: list, rollouts: Rollouts) -> dict[str, float]:
    """Progress figures of a micro-batch's rollouts: mean reward, mean within-group std, the
    fraction of groups with no signal, each reward part's mean, failed and truncated fractions."""
    g = group_stats(rewards, rollouts.group_size)
    stats = {"reward/mean": g["reward"], "reward/std_in_group": g["reward_std"],
             "reward/zero_std_fraction": g["zero_std_fraction"],
             "reward/failed_fraction": sum(bool(o.errors) for o in outcomes) / len(outcomes),
             "completion/truncated_fraction": sum(rollouts.truncated) / len(rollouts)}
    for name in outcomes[0].parts:
        stats[f"reward/{name}"] = sum(o.parts[name] for o in outcomes) / len(outcomes)
    return stats


def rollout_records(prompts: PromptBatch, rollouts: Rollouts, outcomes: list,
                    advantages: torch.Tensor) -> list[dict]:
    """One JSON-ready record per completion (the loop adds the step and rank)."""
    g = rollouts.group_size
    return [{"prompt_id": prompts.ids[i // g], "completion_index": i % g,
             "completion": rollouts.texts[i], "completion_tokens": len(rollouts.completion_ids[i]),
             "truncated": rollouts.truncated[i], "rewards": dict(o.parts), "reward": o.total,
             "advantage": float(advantages[i]), "errors": dict(o.errors)}
            for i, o in enumerate(outcomes)]


def append_records(path, records: list[dict], step: int, rank: int = 0) -> None:
    """Append rollout records to a JSONL file (``rollouts.jsonl``), each with its step and rank."""
    if not records:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps({"step": step, "rank": rank, **record}, ensure_ascii=False)
                     + "\n" for record in records)
