"""The exploration loop: plan a round (one iteration per slot), run it in parallel, record it.

Crash safety comes from the order of writes to the tree file (studies/<name>/tree.json):
a round is planned (ids, parents, mutations, configs) and saved as `pending` nodes before any
run starts; each completed run is saved as soon as it returns. Restarting after a kill
therefore re-runs exactly the pending nodes of the interrupted round, with their planned
configs, and never re-runs or renumbers a completed one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from metabolism.config import (DEFAULT_EXPERIMENT, SLOT_TIME_STEPS, ConfigError, check_name,
                               config_from_dict, load_config, slot_time_step)
from metabolism.explore import logs
from metabolism.explore.agent import AgentError, AgentHook, build_prompt
from metabolism.explore.backends import Job, LocalBackend
from metabolism.explore.mutation import apply_mutation, format_mutation
from metabolism.explore.proposer import BuiltinProposer, Proposal
from metabolism.explore.runners import DEFAULT_RUNNER, RunOutcome
from metabolism.explore.tree import FAILED, ROOT, SLOPE_WEIGHT, Node, Tree, classify, reward
from metabolism.files import write_text_atomically

REPO_ROOT = Path(__file__).resolve().parents[2]
# The research instructions an agent receives live in the repository, so a clone runs alone.
DEFAULT_INSTRUCTIONS = REPO_ROOT / "docs" / "seed" / "phase2_homeostasis_instructions.txt"


# The tree plot is redrawn after a round only when the round took at least this long (real
# runs); fast synthetic rounds get it once, at the end.
ROUND_PLOT_MIN_S = 20.0


class ExplorationError(ValueError):
    """A study cannot start or resume as asked; one line naming the setting."""


@dataclass
class ExplorationSettings:
    """What defines a study; persisted in the tree so a resume continues the same study."""

    study: str
    iterations: int
    block_size: int
    slots: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    ucb_c: float = 1.0
    slope_weight: float = SLOPE_WEIGHT
    base_configs: dict[int, dict] = field(default_factory=dict)
    experiment: str = DEFAULT_EXPERIMENT
    track: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # --override, applied to the bases

    def block_of(self, nid: int) -> int:
        """The block (0-based) iteration `nid` (1-based) belongs to."""
        return (nid - 1) // self.block_size

    def starts_block(self, nid: int) -> bool:
        """Iteration `nid` is the first of its block."""
        return (nid - 1) % self.block_size == 0

    def validate(self) -> None:
        try:
            check_name(self.study, "--study")
        except ConfigError as exc:
            raise ExplorationError(str(exc)) from None
        if not self.slots or len(set(self.slots)) != len(self.slots):
            raise ExplorationError(f"--slots {self.slots}: need distinct slots")
        bad = [s for s in self.slots if s not in SLOT_TIME_STEPS]
        if bad:
            raise ExplorationError(f"--slots: {bad[0]} is not one of {sorted(SLOT_TIME_STEPS)}")
        if self.iterations < 1:
            raise ExplorationError(f"--iterations {self.iterations}: must be >= 1")
        if self.block_size < 1 or self.block_size % len(self.slots):
            raise ExplorationError(f"--block-size {self.block_size}: must be a positive multiple "
                                   f"of the number of slots ({len(self.slots)}) so rounds fit "
                                   "in blocks")
        if self.ucb_c < 0:
            raise ExplorationError(f"--ucb-c {self.ucb_c}: must be >= 0")


def load_base_configs(slots: list[int], config_dir: Path, overrides: dict[str, Any]) -> dict:
    """slot{s}.yaml + overrides, pinned to its slot; validated. {slot: config dict}."""
    out = {}
    for s in slots:
        path = Path(config_dir) / f"slot{s}.yaml"
        if not path.is_file():
            raise ExplorationError(f"{path}: base config of slot {s} not found")
        data = load_config(path, overrides).to_dict()
        if data.get("slot") is None:
            data["slot"] = s
            data["training"]["homeostasis_time_step"] = slot_time_step(s)
        elif data["slot"] != s:
            raise ExplorationError(f"{path}: declares slot {data['slot']}, expected {s}")
        out[s] = config_from_dict(data, source=str(path)).to_dict()
    return out


def read_instructions(path: Path | None) -> str:
    """The seed instructions for the agent: `path` if given, else the repository's copy."""
    p = Path(path) if path else DEFAULT_INSTRUCTIONS
    if not p.is_file():
        raise ExplorationError(f"--instructions {p}: no such file")
    return p.read_text()


class ExplorationLoop:
    """One exploration study in `study_dir`; `run()` is resumable at any point."""

    def __init__(self, settings: ExplorationSettings, study_dir: Path, *,
                 runner: str = DEFAULT_RUNNER, backend=None, agent: AgentHook | None = None,
                 instructions: Path | None = None, log: Callable[[str], None] = print,
                 plot: bool = True):
        settings.validate()
        self.settings = settings
        self.dir = Path(study_dir)
        self.runner = runner
        self.backend = backend or LocalBackend()
        self.agent = agent
        self.instructions = read_instructions(instructions)
        self.log = log
        self.plot = plot
        self.proposer = BuiltinProposer()
        self.tree_path = self.dir / "tree.json"
        self.tree = self._load_or_create()
        self._mlflow = None

    # ------------------------------------------------------------------ setup / resume

    def _load_or_create(self) -> Tree:
        s = self.settings
        if not self.tree_path.exists():
            if not s.base_configs:
                raise ExplorationError("study: no base configs given")
            s.base_configs = {int(k): v for k, v in s.base_configs.items()}
            return Tree(asdict(s))
        tree = Tree.load(self.tree_path)
        stored = tree.settings
        for key in ("block_size", "slots", "ucb_c"):
            if stored.get(key) != getattr(s, key):
                flag = "--" + key.replace("_", "-")
                raise ExplorationError(f"{flag} {getattr(s, key)}: study {s.study} was started "
                                       f"with {stored.get(key)}; use those or a new --study name")
        # a resume keeps the stored base configs: a changed --override would be ignored silently
        if "overrides" in stored and json.loads(json.dumps(s.overrides)) != stored["overrides"]:
            given = " ".join(f"{k}={v}" for k, v in s.overrides.items()) or "none"
            started = " ".join(f"{k}={v}" for k, v in stored["overrides"].items()) or "none"
            raise ExplorationError(f"--override {given}: study {s.study} was started with "
                                   f"{started}; use those or a new --study name")
        # The stored base configs define the roots; the tree keeps using them.
        s.base_configs = {int(k): v for k, v in stored["base_configs"].items()}
        s.experiment = stored.get("experiment", s.experiment)
        stored["iterations"] = s.iterations
        stored["track"] = s.track
        return tree

    def _save(self) -> None:
        self.tree.save(self.tree_path)
        logs.write_logs(self.tree, self.dir, self.settings.study, self._ucb_block(),
                        self.settings.ucb_c)

    def _ucb_block(self) -> int | None:
        """Block whose UCB scores the next iteration uses; None at a block boundary."""
        nid = self.tree.next_id()
        if self.settings.starts_block(nid):
            return None
        return self.settings.block_of(nid)

    # ------------------------------------------------------------------ main loop

    def run(self) -> Tree:
        s = self.settings
        self.dir.mkdir(parents=True, exist_ok=True)
        self._start_tracking()
        done_before = len(self.tree.completed())
        if self.tree.pending():
            ids = [n.id for n in self.tree.pending()]
            self.log(f"[{s.study}] resuming: re-running interrupted iterations {ids}")
            self._supersede_orphans(ids)
            self._execute(self.tree.pending())
        elif done_before:
            self.log(f"[{s.study}] resuming after iteration {max(self.tree.nodes)}")
        while self.tree.next_id() <= s.iterations:
            planned = self._plan_round()
            self._save()
            self._execute(planned)
        self._finalize()
        return self.tree

    def _plan_round(self) -> list[Node]:
        s, tree = self.settings, self.tree
        rnd = max((n.round for n in tree.nodes.values()), default=-1) + 1
        start = tree.next_id()
        slots = [slot for k, slot in enumerate(s.slots) if start + k <= s.iterations]
        parents = {}
        for k, slot in enumerate(slots):
            parents[slot] = tree.select_parent(slot, s.block_of(start + k), s.ucb_c)
            prev = tree.slot_nodes(slot)
            if prev:
                prev[-1].next_parent = parents[slot]
        planned = []
        for k, slot in enumerate(slots):
            node = self._plan_node(start + k, slot, parents[slot], rnd)
            tree.add(node)
            planned.append(node)
        self.log(f"[{s.study}] round {rnd}: " + ", ".join(
            f"iter {n.id} slot_{n.slot} parent={n.parent} {format_mutation(n.mutation)}"
            for n in planned))
        return planned

    def _plan_node(self, nid: int, slot: int, parent: int | str, rnd: int) -> Node:
        s, tree = self.settings, self.tree
        block = s.block_of(nid)
        parent_node = tree.nodes[parent] if parent != ROOT else None
        parent_config = parent_node.config if parent_node else s.base_configs[slot]
        block_start = parent == ROOT
        builtin = self.proposer.propose(tree, slot, parent_node, s.base_configs[slot], nid,
                                        block_start)
        proposal, proposer, agent_error = builtin, "builtin", None
        config, diff = self._apply(parent_config, builtin)
        if self.agent is not None:
            try:
                answer = self._ask_agent(nid, slot, parent, parent_config, block_start, builtin)
                config, diff = apply_mutation(parent_config, answer.changes)
                proposal = Proposal(answer.changes, answer.mode, answer.rationale)
                proposer = "agent"
            except (AgentError, ConfigError) as exc:
                agent_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._agent_log(f"iter {nid} slot_{slot}: agent answer rejected: {agent_error}; "
                                f"using the built-in proposal ({format_mutation(diff)})")
        return Node(id=nid, parent=parent, slot=slot, block=block, round=rnd, config=config,
                    mutation=diff, mode=proposal.mode, proposer=proposer,
                    agent_error=agent_error, rationale=proposal.rationale)

    @staticmethod
    def _apply(parent_config: dict, proposal: Proposal) -> tuple[dict, dict]:
        if not proposal.changes:
            return parent_config, {}
        return apply_mutation(parent_config, proposal.changes)

    # ------------------------------------------------------------------ agent

    def _ask_agent(self, nid, slot, parent, parent_config, block_start, builtin):
        tree = self.tree
        last_round = max((n.round for n in tree.completed()), default=None)
        last = [n for n in tree.completed() if n.round == last_round]
        plots: dict[str, str] = {}
        for n in ([tree.nodes[parent]] if parent != ROOT else []) + last:
            plots.update({f"node{n.id}_{k}": v for k, v in n.plots.items()})
        block = self.settings.block_of(nid)
        prompt = build_prompt(
            study=self.settings.study, iteration=nid, slot=slot, parent=parent,
            parent_config=parent_config, block_boundary=block_start and nid > 1,
            instructions=self.instructions,
            memory=logs.render_memory(tree, self.settings.study),
            ucb=logs.render_ucb(tree, None if block_start else block, self.settings.ucb_c),
            last_results="\n".join(logs.analysis_entry(n, tree) for n in last),
            plots=plots, builtin_suggestion=f"{builtin.mode}: {builtin.changes or 'no change'}")
        answer_text, answer = self.agent.ask(prompt, self.dir / "agent" / f"iter_{nid}_prompt.md")
        write_text_atomically(self.dir / "agent" / f"iter_{nid}_answer.txt", answer_text)
        return answer

    def _agent_log(self, line: str) -> None:
        self.log(f"[{self.settings.study}] {line}")
        with open(self.dir / "agent.log", "a") as fh:
            fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")

    # ------------------------------------------------------------------ execution

    def _tags(self, n: Node) -> dict[str, str]:
        return {"study": self.settings.study, "node_id": str(n.id), "parent_id": str(n.parent),
                "block": str(n.block), "slot": str(n.slot),
                "mutation": format_mutation(n.mutation)[:5000], "mode": n.mode,
                "proposer": n.proposer}

    def _execute(self, nodes: list[Node]) -> None:
        jobs = [Job(n.id, self.runner, n.config, self.tree.study_run_id, self._tags(n))
                for n in nodes]
        started = time.monotonic()
        for node_id, outcome in self.backend.run(jobs):
            node = self.tree.nodes[node_id]
            self._record(node, outcome)
            self._save()
            self.log(f"[{self.settings.study}] iter {node.id} slot_{node.slot}: {node.status}"
                     + (f" ({node.error})" if node.error else
                        f" avg_slope_ratio={node.avg_slope_ratio:.4g} reward={node.reward:.3f}"))
        if time.monotonic() - started > ROUND_PLOT_MIN_S:  # negligible next to real runs
            self._plot()

    def _record(self, node: Node, outcome: RunOutcome) -> None:
        node.metrics = dict(outcome.metrics)
        node.plots = dict(outcome.plots)
        node.run_dir = outcome.run_dir
        node.mlflow_run_id = outcome.mlflow_run_id
        if outcome.ok:
            node.error = None
            node.status = classify(node.avg_slope_ratio)
            node.reward = reward(node.metrics, self.settings.slope_weight)
        else:
            node.error = outcome.error or "run failed"
            node.status = FAILED
            node.reward = 0.0
        self._track_node(node)

    def _finalize(self) -> None:
        s, tree = self.settings, self.tree
        nid = tree.next_id()
        for k, slot in enumerate(s.slots):
            prev = tree.slot_nodes(slot)
            if prev and prev[-1].next_parent is None:
                prev[-1].next_parent = tree.select_parent(slot, s.block_of(nid + k), s.ucb_c)
        self._save()
        self._plot()
        self._end_tracking()
        self.log(f"[{s.study}] done: {len(tree.completed())} iterations in {self.dir}")

    def _plot(self) -> None:
        if not self.plot:
            return
        from metabolism.explore.plots import plot_tree

        try:
            plot_tree(self.tree, self.dir / "tree.png")
        except Exception as exc:  # a plot must never stop the study
            self.log(f"[{self.settings.study}] tree plot failed: {exc}")

    # ------------------------------------------------------------------ MLflow

    def _start_tracking(self) -> None:
        if not self.settings.track:
            return
        from metabolism.explore.exploration_tracking import ExplorationTracker

        self._mlflow = ExplorationTracker(self.settings.experiment, self.settings.study)
        if not self.tree.study_run_id:
            self.tree.study_run_id = self._mlflow.create_study_run(
                {k: v for k, v in asdict(self.settings).items() if k != "base_configs"})
            self.tree.save(self.tree_path)
        else:
            self._mlflow.reopen(self.tree.study_run_id)

    def _supersede_orphans(self, node_ids: list[int]) -> None:
        if self._mlflow is not None:
            self._safely(self._mlflow.supersede, self.tree.study_run_id, node_ids)

    def _track_node(self, node: Node) -> None:
        if self._mlflow is None:
            return
        run_id = self._safely(self._mlflow.record_node, self.tree.study_run_id, node,
                              self._tags(node))
        if run_id and not node.mlflow_run_id:
            node.mlflow_run_id = run_id

    def _end_tracking(self) -> None:
        if self._mlflow is not None:
            self._safely(self._mlflow.finish, self.tree.study_run_id,
                         [self.dir / f"{self.settings.study}_analysis.md",
                          self.dir / f"{self.settings.study}_memory.md",
                          self.dir / "ucb_scores.txt", self.dir / "tree.png",
                          self.tree_path])

    def _safely(self, fn, *args):
        """The tracking store being unavailable is reported, never fatal to the study."""
        try:
            return fn(*args)
        except Exception as exc:
            self.log(f"[{self.settings.study}] MLflow: {type(exc).__name__}: "
                     f"{str(exc).splitlines()[0] if str(exc) else ''}")
            return None
