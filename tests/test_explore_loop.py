import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from explore_helpers import make_study, write_slot_yamls
from metabolism.explore.backends import LocalBackend
from metabolism.explore.tree import FAILED, Tree

ROOT = Path(__file__).resolve().parent.parent
FAILING = "metabolism.explore.runners:failing_slot1_runner"


def test_failed_slot_run_becomes_failed_node_and_loop_continues(tmp_path):
    backend = LocalBackend(max_workers=2)
    try:
        study = make_study(tmp_path, iterations=8, block_size=4, slots=(0, 1),
                           runner=FAILING, backend=backend)
        tree = study.run()
    finally:
        backend.close()
    assert sorted(tree.nodes) == list(range(1, 9))
    for n in tree.sorted():
        if n.slot == 1:
            assert n.status == FAILED and n.reward == 0.0 and not n.metrics
            assert n.error == "FloatingPointError: phase2_loss is NaN at step 12 (diverged)"
        else:
            assert n.error is None and n.metrics["avg_slope_ratio"] > 0
    # a crashed node is never a parent: slot 1 restarts from root inside the block
    assert all(n.parent == "root" for n in tree.sorted() if n.slot == 1)
    text = (study.dir / "t_analysis.md").read_text()
    assert text.count("Metrics: none (run failed: FloatingPointError") == 4


def test_worker_crash_is_a_failed_node(tmp_path):
    backend = LocalBackend(max_workers=1)
    try:
        study = make_study(tmp_path, iterations=2, block_size=2, slots=(0, 1),
                           runner="explore_helpers:dying_runner", backend=backend)
        tree = study.run()
    finally:
        backend.close()
    assert [n.status for n in tree.sorted()] == [FAILED, FAILED]
    assert all("worker process died" in n.error for n in tree.sorted())


def _cli(study_root: Path, cfg_dir: Path, iterations: int, extra=(), env=None):
    cmd = [sys.executable, str(ROOT / "experiments" / "explore.py"), "--study", "r",
           "--iterations", str(iterations), "--block-size", "4", "--studies-root",
           str(study_root), "--config-dir", str(cfg_dir), *extra]
    return cmd


def test_resume_after_kill_mid_block_loses_and_duplicates_nothing(tmp_path):
    cfg_dir = write_slot_yamls(tmp_path / "cfg")
    calls = tmp_path / "calls.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), EXPLORE_FAKE_SLEEP="0.2",
               EXPLORE_FAKE_CALLS=str(calls),
               METABOLISM_EXPLORE_RUNNER="metabolism.explore.runners:sleepy_runner")
    cmd = _cli(tmp_path / "studies", cfg_dir, 12, ["--no-mlflow", "--workers", "2"])
    tree_path = tmp_path / "studies" / "r" / "tree.json"
    # nodes 6+ hang, so the kill lands mid block 1 (iterations 5-8) with exactly 5 done
    proc = subprocess.Popen(cmd, env={**env, "EXPLORE_FAKE_HOLD_FROM": "6"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    done_at_kill: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        if tree_path.exists():
            try:
                nodes = json.loads(tree_path.read_text())["nodes"]
            except json.JSONDecodeError:  # caught between write and rename on some filesystems
                nodes = []
            done_at_kill = [n["id"] for n in nodes if n["status"] != "pending"]
            started = calls.read_text().split() if calls.exists() else []
            if len(done_at_kill) >= 5 and "6" in started[1::2]:
                break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done_at_kill == [1, 2, 3, 4, 5], done_at_kill
    killed_tree = Tree.load(tree_path)
    assert killed_tree.pending(), "the kill should interrupt a round"

    proc2 = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc2.returncode == 0, proc2.stderr
    assert "resuming: re-running interrupted iterations" in proc2.stdout
    tree = Tree.load(tree_path)
    assert sorted(tree.nodes) == list(range(1, 13))
    assert all(n.done and n.error is None for n in tree.sorted())
    for nid in done_at_kill:  # completed before the kill: never run again, unchanged
        assert tree.nodes[nid].metrics == killed_tree.nodes[nid].metrics
    for n in killed_tree.pending():  # interrupted: re-run with exactly the planned config
        assert tree.nodes[n.id].config == n.config and tree.nodes[n.id].parent == n.parent
    starts = [line.split()[1] for line in calls.read_text().splitlines()
              if line.startswith("start")]
    for nid in done_at_kill:
        assert starts.count(str(nid)) == 1
    text = (tmp_path / "studies" / "r" / "r_analysis.md").read_text()
    iters = [int(line.split()[2].rstrip(":")) for line in text.splitlines()
             if line.startswith("## Iter ")]
    assert iters == list(range(1, 13))


def test_cli_refuses_bad_input_with_one_line(tmp_path):
    cfg_dir = write_slot_yamls(tmp_path / "cfg")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cases = [(["--block-size", "6"], "--block-size 6: must be a positive multiple"),
             (["--runner", "nope:fn"], "--runner nope:fn: cannot import nope"),
             (["--override", "training.homeostasis_time_step=8"],
              "training.homeostasis_time_step: fixed at 4 for slot 0")]
    for extra, msg in cases:
        cmd = _cli(tmp_path / "s", cfg_dir, 4, ["--no-mlflow", "--runner",
                                                "metabolism.explore.runners:synthetic_runner",
                                                *extra])
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and out.stderr.strip().startswith("error: ")
        assert msg in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
