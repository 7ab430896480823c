"""tests/helpers/launch.py is the one place that builds multi-process commands: every torchrun or
deepspeed launch in the tests and the benchmark scripts takes its port from ``free_port`` (a
fixed or pid-derived port collides when two runs share a machine)."""

from __future__ import annotations

import ast
import socket
import sys
from pathlib import Path

from tests.helpers import launch

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_WORDS = {"torch.distributed.run", "--master_port", "--standalone", "--rdzv_endpoint"}


def test_only_the_launch_helper_builds_multi_process_commands():
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
    found = []
    for path in files:
        if path in (ROOT / "tests/helpers/launch.py", Path(__file__)):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in LAUNCHER_WORDS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "launch through tests.helpers.launch.entry instead:\n" + "\n".join(found)


def test_multi_process_commands_rendezvous_on_a_free_port():
    faults = ("--kill-after-batches", "1")
    assert launch.entry("eval") == [sys.executable, "-m", "eval"]
    assert launch.entry("eval", faults=faults) == [sys.executable, str(launch.FAULTS), "eval", *faults]
    for launcher in ("torchrun", "deepspeed"):
        cmd = launch.entry("train", 2, launcher, faults=("--nan-steps", "2"))
        port = int(cmd[cmd.index("--master_port") + 1])
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing holds it
        assert cmd[-4:] == [str(launch.FAULTS), "train", "--nan-steps", "2"], launcher
