"""The external agent hook: a configured command proposes the next mutation.

The command gets the prompt on stdin (and its path in $EXPLORE_PROMPT_FILE) and answers on
stdout with YAML or JSON (a ```yaml fence is fine) in the shape ANSWER_FORMAT shows.

The answer is validated like any config by the loop; any problem raises AgentError, which the
loop logs and answers with the built-in proposer's mutation instead.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metabolism.config import flatten
from metabolism.files import write_text_atomically
from metabolism.explore.mutation import KNOBS, STRATEGY_NAMES, strategy_key

MODES = ("exploit", "explore", "strategy-switch", "embedding-focus", "slope-focus")
# The answer's shape, shown to the agent in every prompt (a constant, not read from the
# docstring: `python -OO` strips docstrings).
ANSWER_FORMAT = """

    mutation:                       # dotted config keys -> new values (required)
      training.learning_rate_node_homeostasis: 0.03
    strategy: residual_supervision  # optional: a strategy name or number 1-8 to enable
    mode: slope-focus               # optional label for the Mode/Strategy line
    rationale: one line             # optional

"""


class AgentError(ValueError):
    """The agent's answer is unusable; one line saying why."""


@dataclass
class AgentAnswer:
    changes: dict[str, Any]
    mode: str
    rationale: str


def parse_answer(text: str) -> AgentAnswer:
    fence = re.search(r"```(?:ya?ml|json)?\s*\n(.*?)```", text, re.S)
    body = fence.group(1) if fence else text
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise AgentError(f"answer is not YAML/JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AgentError(f"answer must be a mapping with a 'mutation' key, got "
                         f"{type(data).__name__}")
    unknown = set(data) - {"mutation", "strategy", "mode", "rationale"}
    if unknown:
        raise AgentError(f"answer has unknown keys: {', '.join(sorted(map(str, unknown)))}")
    mutation = data.get("mutation") or {}
    if not isinstance(mutation, dict):
        raise AgentError("mutation: expected a mapping of dotted keys to values")
    changes = flatten(mutation)
    mode = str(data.get("mode") or "")
    strategy = data.get("strategy")
    if strategy is not None:
        name = strategy
        if isinstance(strategy, int) and 1 <= strategy <= len(STRATEGY_NAMES):
            name = STRATEGY_NAMES[strategy - 1]
        if name not in STRATEGY_NAMES:
            raise AgentError(f"strategy: {strategy!r} is not one of 1-8 / "
                             f"{', '.join(STRATEGY_NAMES)}")
        changes.setdefault(strategy_key(name), True)
        mode = mode or "strategy-switch"
    if mode and mode not in MODES:
        raise AgentError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    if not changes:
        raise AgentError("answer has no mutation")
    return AgentAnswer(changes, mode or "exploit", str(data.get("rationale") or "").strip()
                       .replace("\n", " ")[:300])


def build_prompt(*, study: str, iteration: int, slot: int, parent: int | str,
                 parent_config: dict, block_boundary: bool, instructions: str, memory: str,
                 ucb: str, last_results: str, plots: dict[str, str],
                 builtin_suggestion: str) -> str:
    training = yaml.safe_dump({"training": parent_config.get("training", {})}, sort_keys=False)
    plot_lines = "\n".join(f"- {k}: {v}" for k, v in sorted(plots.items())) or "- (none yet)"
    return f"""# Exploration study {study}: propose iteration {iteration}

{'>>> BLOCK END + CODE REVIEW <<<  (new block: parent=root; a code strategy may change)'
 if block_boundary else ''}
## Task
Iteration {iteration} runs on slot_{slot}; its parent is {parent} (chosen by UCB, see below).
Propose ONE mutation of the parent's config. Mutable keys: {', '.join(KNOBS)}, and
training.strategies.<name>.<field> for the strategies {', '.join(STRATEGY_NAMES)}.
Never change homeostasis_time_step, simulation.*, phase1.*, model.*, regime or slot.
The built-in proposer would do: {builtin_suggestion}

## Answer format (stdout, YAML or JSON)
{ANSWER_FORMAT}
## Parent config
```yaml
{training}```

## Latest plots (parent and last round)
{plot_lines}

## UCB scores (ucb_scores.txt)
```
{ucb or '(empty: block boundary, parent=root)'}
```

## Last results
{last_results or '(none yet)'}

## Memory ({study}_memory.md)
{memory}

## Instructions
{instructions}
"""


class AgentHook:
    """Runs the configured command; raises AgentError on any failure."""

    def __init__(self, command: str, timeout_s: float = 600.0, workdir: Path | None = None):
        self.command = command
        self.timeout_s = timeout_s
        self.workdir = workdir

    def ask(self, prompt: str, prompt_file: Path) -> tuple[str, AgentAnswer]:
        write_text_atomically(prompt_file, prompt)
        env = dict(os.environ, EXPLORE_PROMPT_FILE=str(prompt_file))
        try:
            proc = subprocess.run(self.command, shell=True, input=prompt, capture_output=True,
                                  text=True, timeout=self.timeout_s, env=env, cwd=self.workdir)
        except subprocess.TimeoutExpired:
            raise AgentError(f"agent command timed out after {self.timeout_s:g}s") from None
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
            raise AgentError(f"agent command exited {proc.returncode}: {tail}")
        return proc.stdout, parse_answer(proc.stdout)
