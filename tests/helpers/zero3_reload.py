"""Load an exported model under DeepSpeed ZeRO-3 (``zero.Init``: every parameter partitioned as
it is loaded) and write its logits on the export verification sample.

Run with ``torchrun --nproc_per_node 2 tests/helpers/zero3_reload.py EXPORT_DIR OUT.pt``. A
Qwen3-VL-MoE folder whose experts are not in the hub layout fails here with a size mismatch
(shared/STACK-NOTES.md, pitfall 3); an export must load.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    import deepspeed
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.integrations import HfDeepSpeedConfig

    from train.export import sample_outputs

    export_dir, out = sys.argv[1], Path(sys.argv[2])
    deepspeed.init_distributed(dist_backend="gloo")
    zero3 = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    keep_alive = HfDeepSpeedConfig(zero3)  # from_pretrained partitions while it loads
    model = AutoModelForImageTextToText.from_pretrained(export_dir)
    engine, *_ = deepspeed.initialize(model=model, config=zero3)
    outputs = sample_outputs(engine.module, AutoProcessor.from_pretrained(export_dir))
    if int(os.environ["RANK"]) == 0:
        torch.save({"logits": outputs.logits, "generated": outputs.generated}, out)
    del keep_alive
    # Leave together and tear gloo down explicitly: a rank that exits while its peer still
    # works can abort in gloo's thread teardown ("terminate called without an active exception").
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
