"""Config mutations: which keys may change, applying them, and the Mutation line.

A mutation is a dict of dotted keys -> new values. Only the Phase 2 knobs and the strategy
switches may change; the slot's homeostasis_time_step, the frozen regime (simulation, phase1,
model) and the metric definitions are refused with a one-line error naming the key. The
Mutation line (`Mutation: key: old -> new; key2: old -> new`) is machine-parsed, so values are
written as JSON and read back exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from metabolism.config import (TIME_STEP_RULE, ConfigError, StrategiesConfig, config_from_dict,
                               flatten, set_dotted)

# The Phase 2 knobs of the seed (parameter exploration order: lr_node, lr_emb, duration, batch).
LR_NODE = "training.learning_rate_node_homeostasis"
LR_EMB = "training.learning_rate_embedding_homeostasis"
DAL = "training.data_augmentation_loop"
BATCH = "training.batch_size"
KNOB_RANGES = {LR_NODE: (1e-4, 1e-1), LR_EMB: (1e-4, 1e-1), DAL: (100, 5000), BATCH: (4, 32)}
KNOBS = tuple(KNOB_RANGES)
SHORT_NAMES = {LR_NODE: "lr_node_homeo", LR_EMB: "lr_emb_homeo", DAL: "data_augmentation_loop",
               BATCH: "batch_size"}
# The seed numbers its literature strategies 1-8 in this order (the config's field order).
STRATEGY_NAMES = tuple(f.name for f in dataclasses.fields(StrategiesConfig))

_FORBIDDEN_WHY = {
    "training.homeostasis_time_step": f"{TIME_STEP_RULE}; a mutation may not change it",
    "training.freeze_stoichiometry": "must stay true in Phase 2",
    "training.skip_phase1": "must stay true in Phase 2",
    "training.homeostasis_training": "must stay true in Phase 2",
    "regime": "the regime is frozen during an exploration",
    "slot": "a node belongs to its slot",
}
_FORBIDDEN_SECTIONS = {
    "simulation": "simulation parameters are frozen (fixed regime)",
    "phase1": "Phase 1 is frozen in Phase 2",
    "model": "the model architecture is frozen",
    "evaluation": "metric definitions are fixed so runs stay comparable",
    "tracking": "tracking settings are not an exploration parameter",
}


def strategy_key(name: str) -> str:
    return f"training.strategies.{name}.enabled"


def strategy_number(name: str) -> int:
    return STRATEGY_NAMES.index(name) + 1


def check_key(key: str, base: dict[str, Any]) -> None:
    """Raise ConfigError unless `key` is a knob or a field of a strategy (present in `base`)."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{key!r}: a mutation key must be a dotted config key")
    if key in _FORBIDDEN_WHY:
        raise ConfigError(f"{key}: {_FORBIDDEN_WHY[key]}")
    section = key.split(".", 1)[0]
    if section in _FORBIDDEN_SECTIONS:
        raise ConfigError(f"{key}: {_FORBIDDEN_SECTIONS[section]}")
    if key in KNOBS:
        return
    parts = key.split(".")
    if len(parts) == 4 and parts[:2] == ["training", "strategies"] and parts[2] in STRATEGY_NAMES:
        if key in flatten(base):
            return
    raise ConfigError(f"{key}: not a mutable key (allowed: {', '.join(KNOBS)}, "
                      "training.strategies.<name>.<field>)")


def get_dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def apply_mutation(config: dict[str, Any], changes: dict[str, Any]) -> tuple[dict, dict]:
    """Validate `changes` against `config`; return (new config dict, {key: [old, new]}).

    Raises ConfigError (one line, naming the key) for a forbidden key, a value the config
    rejects, or a mutation that changes nothing.
    """
    if not isinstance(changes, dict) or not changes:
        raise ConfigError("mutation: expected a non-empty mapping of dotted keys to values")
    new = copy.deepcopy(config)
    diff: dict[str, list[Any]] = {}
    for key, value in changes.items():
        check_key(key, config)
        old = get_dotted(config, key)
        set_dotted(new, key, value)
        if old != value:
            diff[key] = [old, value]
    cfg = config_from_dict(new, source="<mutation>")  # validates types and ranges
    new = cfg.to_dict()
    for key in diff:  # report the coerced value (e.g. '1e-2' -> 0.01)
        diff[key][1] = get_dotted(new, key)
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    if not diff:
        raise ConfigError("mutation: changes nothing in the parent config")
    for key, (lo, hi) in KNOB_RANGES.items():
        if key in diff and not lo <= diff[key][1] <= hi:
            raise ConfigError(f"{key}: {diff[key][1]} is outside the seed's range [{lo}, {hi}]")
    return new, diff


def _fmt(value: Any) -> str:
    return json.dumps(value)


def format_mutation(diff: dict[str, list[Any]]) -> str:
    """`key: old -> new; key2: old -> new`, or `none` for a base config run."""
    if not diff:
        return "none"
    return "; ".join(f"{k}: {_fmt(o)} -> {_fmt(n)}" for k, (o, n) in diff.items())


def parse_mutation(text: str) -> dict[str, list[Any]]:
    """Inverse of format_mutation; accepts the whole `Mutation: ...` line too."""
    text = text.strip()
    if text.startswith("Mutation:"):
        text = text[len("Mutation:"):].strip()
    if text == "none":
        return {}
    out: dict[str, list[Any]] = {}
    for part in text.split("; "):
        key, sep, rest = part.partition(": ")
        old, arrow, new = rest.partition(" -> ")
        if not sep or not arrow:
            raise ValueError(f"Mutation line: cannot parse {part!r}")
        out[key.strip()] = [json.loads(old), json.loads(new)]
    return out
