"""The benches' process-tree accounting (bench/_common.py) counts a server's children and the
CPU they burn: bench_capacity's "Milvus CPU per query" and bench_index's server RSS rest on it."""

from __future__ import annotations

import subprocess
import sys
import time

from bench._common import tree_cpu_s, tree_pids, tree_rss_mb

# A parent (the "server") whose child burns 1 s of CPU, says so, then idles until stdin closes.
# CPU time, not wall time, so the figures hold on a loaded machine.
CHILD = """
import sys, time
end = time.process_time() + 1.0
while time.process_time() < end:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""
PARENT = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {CHILD!r}], check=True)"


def test_the_cpu_a_child_burnt_is_counted_and_idling_adds_none() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "burnt"
        assert len(tree_pids(proc.pid)) == 2  # the parent and its child
        burnt = tree_cpu_s(proc.pid)
        # 1.0 s of spinning plus two interpreters' start-up; ticks are 10 ms.
        assert 1.0 <= burnt <= 2.0, burnt
        assert tree_rss_mb(proc.pid) > 5  # two Python interpreters
        time.sleep(0.5)
        assert tree_cpu_s(proc.pid) - burnt <= 0.05  # both now wait on a pipe
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0
