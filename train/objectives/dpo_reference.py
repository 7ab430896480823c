"""Reference log-probs computed once, before the first step (``dpo.precompute_reference``).

DPO's reference is the model training starts from. Instead of a second forward every step
(adapters off for LoRA, a frozen copy for full fine-tuning), one no-grad pass over every pair of
the corpus, before any update, records each pair's chosen and rejected reply log-prob sums; the
steps then look them up by the pair's corpus index (``PAIR_INDEX`` in the batch). For full
fine-tuning this is what makes DPO possible without a frozen copy (under ZeRO-3 too: the pass
runs through the partitioned model as training does); for LoRA it saves a forward per step.

The table is written to ``output_dir/reference_logps.json`` (rank 0, atomically) with the
corpus it belongs to (pair count and a hash of the ids), and read back on resume, so a resumed
run uses the values the interrupted one used. A table of another corpus is recomputed, with a
note.

Ranks share the pass: rank r takes pairs r, r + dp, ...; every rank runs as many forwards as
the busiest (ZeRO-3 gathers each layer's weights collectively), repeating its last batch;
the values are all-gathered.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch

from train.objectives.dpo import batch_sequence_logps, reference_logps

FILE = "reference_logps.json"
PAIR_INDEX = "pair_index"  # batch key: each pair's corpus index (PairCollator)


def corpus_key(dataset) -> dict:
    corpus = dataset.corpus
    ids = "\n".join(corpus.sample_id(i) for i in range(len(corpus)))
    return {"pairs": len(corpus), "ids_sha256": hashlib.sha256(ids.encode()).hexdigest()}


class ReferenceTable:
    """Pair corpus index -> (chosen, rejected) reference log-prob sums."""

    def __init__(self, values: dict[int, tuple[float, float]]):
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def logps(self, pair_index: torch.Tensor) -> torch.Tensor:
        """The ``2B`` per-row reference log-probs of a pair batch (chosen rows, then rejected:
        ``data.preference.collate_pairs``' order, which packed batches' sequence ids follow)."""
        try:
            pairs = [self.values[int(i)] for i in pair_index.tolist()]
        except KeyError as e:
            raise RuntimeError(f"pair {e.args[0]} has no precomputed reference log-probs "
                               f"({FILE} was computed for another corpus?)") from None
        chosen, rejected = zip(*pairs)
        return torch.tensor(chosen + rejected, dtype=torch.float32, device=pair_index.device)


def load_or_compute(path: Path, dataset, collator, policy: torch.nn.Module, dist,
                    batch_size: int, lora: bool) -> ReferenceTable:
    key = corpus_key(dataset)
    if path.is_file():
        saved = json.loads(path.read_text())
        if {k: saved.get(k) for k in key} == key:
            if dist.is_main:
                print(f"[dpo] reference log-probs of {key['pairs']} pairs read from {path}",
                      flush=True)
            return ReferenceTable({int(k): tuple(v) for k, v in saved["values"].items()})
        if dist.is_main:
            print(f"[dpo] {path} belongs to another corpus ({saved.get('pairs')} pairs): "
                  f"recomputing it", flush=True)
    values = compute(dataset, collator, policy, dist, batch_size, lora)
    if dist.is_main:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**key, "values": {str(k): list(v) for k, v in
                                                     sorted(values.items())}}))
        os.replace(tmp, path)
        print(f"[dpo] reference log-probs of {len(values)} pairs computed: {path}", flush=True)
    return ReferenceTable(values)


@torch.no_grad()
def compute(dataset, collator, policy: torch.nn.Module, dist, batch_size: int,
            lora: bool) -> dict[int, tuple[float, float]]:
    """This rank's share of the pass, all-gathered: pair index -> (chosen, rejected)."""
    mine = list(range(dist.dp_rank, len(dataset), dist.dp_size))
    forwards = math.ceil(math.ceil(len(dataset) / dist.dp_size) / batch_size)
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    values: dict[int, tuple[float, float]] = {}
    try:
        for n in range(forwards):
            # a rank with fewer pairs repeats its last batch: every rank makes the same calls
            chunk = mine[n * batch_size:(n + 1) * batch_size] or mine[-batch_size:] or [0]
            batch = collator([dataset[i] for i in chunk])
            described = batch.pop("samples")
            batch.pop("skipped"), batch.pop("repaired"), batch.pop(PAIR_INDEX, None)
            batch = {k: v.to(device) for k, v in batch.items()}
            logps = (reference_logps(policy, batch) if lora
                     else batch_sequence_logps(policy, batch)[0]).float().cpu()
            chosen, rejected = logps.chunk(2)
            for d, c, r in zip(described, chosen.tolist(), rejected.tolist()):
                values[d["index"]] = (c, r)
    finally:
        policy.train(was_training)
    if dist.world_size > 1:
        gathered = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, values)
        values = {k: v for part in gathered for k, v in part.items()}
    return values
