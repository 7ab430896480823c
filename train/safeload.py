"""Loading checkpoint files without running code from them.

A ``.pt`` file is a pickle: loaded with ``torch.load(weights_only=False)`` it can call any
function it names, so a crafted ``trainer_state.pt`` in a shared run folder would run code on
``train.resume=auto``. Everything the trainer and the exporter read goes through ``load_file``
(``weights_only=True``: tensors and plain values only). DeepSpeed reads its own shards with
``weights_only=False``, out of our hands, so ``check_pickles`` first lists the functions and
classes every ``.pt`` file of a checkpoint would load (without loading it) and refuses any
outside a short allow-list: the numpy types of RNG files written before RNG state was stored
as plain values, and the plain data classes DeepSpeed's optimizer shards hold (seen in ZeRO-2
and ZeRO-3 checkpoints, bf16 and fp32, with and without offload). A DeepSpeed version that
pickles another class is refused naming it: add it to ``DEEPSPEED_GLOBALS`` once checked.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch

from train.errors import CheckpointError

# The numpy RNG state (np.random.get_state()) older rng_rank{r}.pt files hold.
NUMPY_GLOBALS = ("numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
                 "numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType")
# Plain data classes in DeepSpeed's optimizer shards (ZeRO-2/3, bf16/fp16, offload): an enum,
# the loss-scale records, ZeRO-2's (start, numel) fragment addresses.
DEEPSPEED_GLOBALS = ("deepspeed.runtime.zero.config.ZeroStageEnum",
                     "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                     "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                     "deepspeed.utils.tensor_fragment.fragment_address")
ALLOWED = frozenset(NUMPY_GLOBALS + DEEPSPEED_GLOBALS)
REFUSAL = ("refused to load it: a checkpoint written by this trainer holds only tensors and plain "
           "values, so this file was made or changed by something else and could run code when "
           "loaded. Delete it (or the whole checkpoint folder) and resume from another checkpoint")


def load_file(path: Path, map_location=None):
    """``torch.load(path, weights_only=True)``, also accepting the allow-listed types; a file
    that names anything else is refused with a message naming it."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_allowed_objects()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        named = _unsafe_globals(path)
        what = f"it names {', '.join(named)}" if named else f"it is not a plain tensor file ({e})"
        raise CheckpointError(f"{path}: {what}; {REFUSAL}") from None


def check_pickles(folder: Path) -> None:
    """Refuse ``folder`` if any ``.pt`` file under it would load a function or class outside
    the allow-list (nothing is loaded: only the pickle's list of names is read)."""
    for path in sorted(Path(folder).rglob("*.pt")):
        bad = [name for name in _unsafe_globals(path) if name not in ALLOWED]
        if bad:
            raise CheckpointError(f"{path}: it names {', '.join(bad)}; {REFUSAL}")


def _unsafe_globals(path: Path) -> list[str]:
    """The functions and classes the pickle in ``path`` refers to beyond torch's own safe set."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as e:  # noqa: BLE001 - any unreadable file is refused the same way
        raise CheckpointError(f"{path}: not a file torch.save wrote ({type(e).__name__}: {e}); "
                              f"{REFUSAL}") from None


def _allowed_objects() -> list:
    """The allow-listed names as objects (what safe_globals wants), from modules already
    imported: a file can only hold DeepSpeed objects in a run that uses DeepSpeed, and
    importing it (or numpy's deprecated aliases) just to allow them costs seconds or warns."""
    found = []
    for name in sorted(ALLOWED):
        module, _, attr = name.rpartition(".")
        if module in sys.modules and hasattr(sys.modules[module], attr):
            found.append(getattr(sys.modules[module], attr))
    return found
