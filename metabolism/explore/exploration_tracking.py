"""MLflow bookkeeping of an exploration study: a parent run, every iteration a child run.

The runner logs its own run (nested under the study run, with our tags); this module makes
the tags a guarantee rather than a hope: it re-applies them on the runner's run, creates a
FAILED run for an iteration whose runner died before logging one, and marks the runs of
iterations interrupted by a kill as KILLED (superseded) so they are never counted twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metabolism import tracking
from metabolism.tracking import PROCESS_TAG, process_tag


class ExplorationTracker:
    def __init__(self, experiment: str, study: str):
        self.experiment_id = tracking.setup_experiment(experiment)
        self.client = tracking.client()
        self.study = study

    def create_study_run(self, params: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"study:{self.study}",
                                     tags={"study": self.study, "kind": "exploration_study",
                                           PROCESS_TAG: process_tag()})
        for k, v in params.items():
            self.client.log_param(run.info.run_id, k, str(v)[:500])
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        self.client.set_tag(run_id, PROCESS_TAG, process_tag())  # this process owns it now
        self.client.update_run(run_id, status="RUNNING")

    def _node_runs(self, node_id: int) -> list:
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.study = '{self.study}' and tags.node_id = '{node_id}'",
            order_by=["attributes.start_time DESC"])

    def supersede(self, study_run_id: str, node_ids: list[int]) -> None:
        for nid in node_ids:
            for run in self._node_runs(nid):
                if run.info.status == "RUNNING":
                    self.client.set_tag(run.info.run_id, "superseded", "true")
                    self.client.set_terminated(run.info.run_id, status="KILLED")

    def record_node(self, study_run_id: str, node, tags: dict[str, str]) -> str:
        """Ensure the iteration's run exists, carries `tags`, and says FAILED with the error."""
        run_id = node.mlflow_run_id
        if not run_id:
            live = [r for r in self._node_runs(node.id) if r.info.status != "KILLED"]
            run_id = live[0].info.run_id if live else None
        if not run_id:
            run = self.client.create_run(
                self.experiment_id, run_name=f"iter{node.id}_slot{node.slot}",
                tags={**tags, "mlflow.parentRunId": study_run_id})
            run_id = run.info.run_id
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)
        self.client.set_tag(run_id, "node_status", node.status)
        if node.error:
            self.client.set_tag(run_id, "error", node.error[:5000])
            if self.client.get_run(run_id).info.status != "FAILED":
                self.client.set_terminated(run_id, status="FAILED")
        step = node.id
        self.client.log_metric(study_run_id, f"reward_slot{node.slot}", node.reward, step=step)
        if node.avg_slope_ratio is not None:
            self.client.log_metric(study_run_id, f"avg_slope_ratio_slot{node.slot}",
                                   node.avg_slope_ratio, step=step)
        return run_id

    def finish(self, study_run_id: str, artifacts: list[Path]) -> None:
        for p in artifacts:
            if Path(p).is_file():
                self.client.log_artifact(study_run_id, str(p))
        self.client.set_terminated(study_run_id, status="FINISHED")
