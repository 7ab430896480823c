"""``results/<checkpoint>.json``: one row per task a checkpoint was scored on, over every eval
run into the output folder, for one set of weights.

Runs add up: an eval of task B after an eval of task A leaves both rows (it used to leave B
only, and A vanished from results and leaderboard). A row is replaced only by a newer row
of the same (task, split, settings) under the same weights (its ``config_hash`` covers the
settings and the weights' fingerprint). When the weights behind the name changed
(retrained into the same folder), the old weights' rows are removed, not kept beside the new
ones, and the console names the tasks to re-run: a results file, and so the leaderboard built
from it, never mixes two models under one checkpoint name.

The file is replaced atomically (a temp file renamed over it), so a run killed while writing
leaves the previous results whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from eval.config import check_name


def results_path(out_dir: Path, name: str) -> Path:
    check_name(name, "checkpoints[].name")  # also when a config was changed after loading
    return Path(out_dir) / "results" / f"{name}.json"


def read_results(path: Path) -> list[dict]:
    """The rows of an existing results file ([] when there is none). A file that is not a JSON
    list of rows stops the run before anything is generated, rather than being overwritten."""
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); restore it or delete it (its tasks then "
                         f"need re-running to reappear on the leaderboard)") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a JSON list of result rows; restore it or delete it")
    return rows


def row_key(row: dict) -> tuple:
    return row.get("fingerprint"), row.get("task"), row.get("split"), row.get("config_hash")


def merge_rows(old: list[dict], new: list[dict], fingerprint: str) -> tuple[list[dict], list[dict]]:
    """(rows to keep, old rows dropped without a replacement). ``new`` rows replace old ones of
    the same key in place, other new rows follow; old rows of other weights are dropped."""
    fresh = {row_key(r): r for r in new}
    merged, dropped, placed = [], [], set()
    for row in old:
        key = row_key(row)
        if row.get("fingerprint") != fingerprint:
            dropped.append(row)
        elif key not in fresh:
            merged.append(row)
        elif key not in placed:
            merged.append(fresh[key])
            placed.add(key)
    merged += [r for k, r in fresh.items() if k not in placed]
    rerun = {(r.get("task"), r.get("split")) for r in new}
    return merged, [r for r in dropped if (r.get("task"), r.get("split")) not in rerun]


def dropped_messages(dropped: list[dict], fingerprint: str) -> list[str]:
    """What the console says about the rows of other weights that were removed."""
    def tasks(rows: list[dict]) -> str:
        return ", ".join(dict.fromkeys(str(r.get("task")) for r in rows))

    legacy = [r for r in dropped if not r.get("fingerprint")]
    changed = [r for r in dropped if r.get("fingerprint")]
    messages = []
    if changed:
        old = ", ".join(dict.fromkeys(r["fingerprint"] for r in changed))
        messages.append(f"weights changed (fingerprint {old} -> {fingerprint}); results of the old "
                        f"weights for tasks {tasks(changed)} removed; re-run them")
    if legacy:
        messages.append(f"results without a weights fingerprint (written by an older version, "
                        f"possibly of other weights) for tasks {tasks(legacy)} removed; re-run them")
    return messages


def update_results(path: Path, new: list[dict], fingerprint: str, note=print) -> list[dict]:
    """Merge this run's rows into ``path`` (see the module docstring) and write it atomically;
    ``note(message)`` hears which old rows were dropped. Returns the rows written."""
    rows, dropped = merge_rows(read_results(path), new, fingerprint)
    for message in dropped_messages(dropped, fingerprint):
        note(message)
    write_atomic(path, json.dumps(rows, indent=1))
    return rows


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it over ``path``: readers, and
    a run killed meanwhile, see the old content or the new, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
