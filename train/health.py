"""Signs that a run has gone wrong while every number still looks like a number.

``nonfinite_weights``: NaN/inf in the trainable weights, checked before anything is saved (a
checkpoint or final/ full of NaN must never look like a result). ``CollapseWatch``: a run
whose gradient norm is exactly 0, or whose loss no longer moves, step after step - what a
learning rate far too high does once the model saturates - is reported (a console warning, a
flag in metrics.jsonl) but not stopped: a plateau can be genuine.
"""

from __future__ import annotations

import torch


def nonfinite_weights(module: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters holding NaN/inf on this rank: under ZeRO-3 the rank's
    shard (``ds_tensor``; the caller sums over ranks), else the whole tensor."""
    return [name for name, p in module.named_parameters()
            if p.requires_grad and not torch.isfinite(getattr(p, "ds_tensor", p).detach()).all()]


class CollapseWatch:
    """Counts consecutive steps that look collapsed: gradient norm exactly 0, or the loss equal
    to the previous step's to 6 significant digits. ``steps``: how many in a row make the run
    collapsed (0: never)."""

    def __init__(self, steps: int):
        self.steps, self.streak, self.last_loss = steps, 0, None

    def update(self, loss: float, grad_norm: float) -> bool:
        """One finite step; returns whether the run is collapsed as of this step."""
        flat = self.last_loss is not None and f"{loss:.6g}" == f"{self.last_loss:.6g}"
        self.streak = self.streak + 1 if grad_norm == 0.0 or flat else 0
        self.last_loss = loss
        return self.collapsed

    @property
    def collapsed(self) -> bool:
        return self.steps > 0 and self.streak >= self.steps

    @property
    def just_collapsed(self) -> bool:
        """This step made the streak long enough (warn once per streak)."""
        return self.steps > 0 and self.streak == self.steps
