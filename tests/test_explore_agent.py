import sys
import textwrap

import pytest

from explore_helpers import make_study
from metabolism.explore.agent import AgentError, AgentHook, parse_answer

LR_NODE = "training.learning_rate_node_homeostasis"


def agent_script(tmp_path, body: str) -> str:
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent(body))
    return f"{sys.executable} {script}"


def test_parse_answer_accepts_yaml_json_fences_and_strategy_numbers():
    a = parse_answer("```yaml\nmutation:\n  training.batch_size: 4\nstrategy: 3\n```")
    assert a.changes == {"training.batch_size": 4,
                         "training.strategies.contrastive.enabled": True}
    assert a.mode == "strategy-switch"
    b = parse_answer('{"mutation": {"training": {"learning_rate_node_homeostasis": 0.05}},'
                     ' "mode": "slope-focus", "rationale": "escape zero init"}')
    assert b.changes == {LR_NODE: 0.05} and b.mode == "slope-focus"
    for bad, match in [("::: [", "not YAML"), ("- a\n- b", "mapping"), ("mutation: {}", "no mutation"),
                       ("mutation: {a: 1}\nfoo: 2", "unknown keys"),
                       ("mutation: {a: 1}\nstrategy: 9", "strategy"),
                       ("mutation: {a: 1}\nmode: yolo", "mode")]:
        with pytest.raises(AgentError, match=match):
            parse_answer(bad)


def test_good_agent_answer_is_used_and_gets_the_full_prompt(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORE_TEST_PLOTS", str(tmp_path / "plots"))
    cmd = agent_script(tmp_path, f"""
        import os, re, sys
        prompt = sys.stdin.read()
        assert open(os.environ["EXPLORE_PROMPT_FILE"]).read() == prompt
        it = int(re.search(r"Iteration (\\d+) runs on slot", prompt).group(1))
        print(f"mutation:\\n  {LR_NODE}: {{0.02 + it / 1000}}\\n"
              "strategy: residual_supervision\\nrationale: go big")
    """)
    study = make_study(tmp_path, iterations=8, block_size=8,
                       runner="explore_helpers:plotting_runner", agent=AgentHook(cmd, 30))
    tree = study.run()
    for n in tree.sorted():
        assert n.proposer == "agent" and n.agent_error is None
        assert n.mutation[LR_NODE][1] == pytest.approx(0.02 + n.id / 1000)
        assert n.config["training"]["strategies"]["residual_supervision"]["enabled"]
        if n.parent == "root":
            assert n.mutation["training.strategies.residual_supervision.enabled"] == [False, True]
    prompt = (study.dir / "agent" / "iter_6_prompt.md").read_text()
    for part in ("## Memory (t_memory.md)", "## UCB scores", "Node 2: UCB=", "## Last results",
                 "## Iter 2:", "## Instructions", "node2_mlp_node", "MLP_node_p2_100.png",
                 "slot_1", "parent is 2"):
        assert part in prompt, part
    assert "go big" in (study.dir / "t_analysis.md").read_text()
    assert not (study.dir / "agent.log").exists()


@pytest.mark.parametrize("body,why", [
    ("print('::: [')", "not YAML"),
    ("print('mutation: {training.homeostasis_time_step: 8}')", "fixed per slot"),
    ("print('mutation: {simulation.n_metabolites: 10}')", "frozen"),
    ("print('mutation: {training.learning_rate_node_homeostasis: 5.0}')", "outside"),
    ("import sys; sys.exit(3)", "exited 3"),
    ("import time; time.sleep(5)", "timed out"),
])
def test_bad_agent_answer_is_logged_and_replaced_by_builtin(tmp_path, body, why):
    cmd = agent_script(tmp_path, body)
    study = make_study(tmp_path, iterations=4, block_size=4, slots=(0, 1),
                       agent=AgentHook(cmd, timeout_s=0.5))
    tree = study.run()
    assert len(tree.completed()) == 4  # the loop carried on
    for n in tree.sorted():
        assert n.proposer == "builtin" and why in n.agent_error
    assert tree.nodes[3].mutation  # the built-in proposal was applied instead
    log = (study.dir / "agent.log").read_text()
    assert log.count("agent answer rejected") == 4 and why in log


def test_agent_reads_the_seed_instructions_shipped_in_the_repository(tmp_path):
    """A clone has no ../shared: the agent's instructions come from docs/seed in the repo."""
    from metabolism.explore.loop import (DEFAULT_INSTRUCTIONS, REPO_ROOT, ExplorationError,
                                         read_instructions)
    assert DEFAULT_INSTRUCTIONS.is_relative_to(REPO_ROOT) and DEFAULT_INSTRUCTIONS.is_file()
    text = read_instructions(None)
    assert "Phase 2" in text and "MLP_node" in text
    with pytest.raises(ExplorationError, match="no_such_file.txt"):
        read_instructions(tmp_path / "no_such_file.txt")

