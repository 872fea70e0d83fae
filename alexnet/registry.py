"""Champion/challenger: which registered version serves as `models:/NAME@champion`.

A new version takes the `champion` alias only if its val top-1 beats the current champion's
on the same data; otherwise it gets `challenger`. "The same data" is explicit:

- the champion was trained on the same dataset version: the two recorded val top-1s compare;
- a different dataset version (new images arrived): the champion is re-scored on the new
  version's val split (the caller passes `rescore`), and that number compares;
- no re-score possible (e.g. the class lists differ): the new version is `challenger`, and a
  person decides with `alexnet evaluate` and `alexnet promote`.

Ties keep the current champion. The decision, the reason and both numbers are written on the
new version as tags (`decision`, `decision.*`) and in its description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.errors import UserError

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Decision:
    alias: str  # champion | challenger
    reason: str
    val_top1: float  # the new version's
    champion_version: str | None = None  # the champion it was compared with
    champion_top1: float | None = None  # that champion's val top-1 on the new version's data


def decide(val_top1: float, dataset_version: str, champion: dict | None,
           rescored_top1: float | None = None) -> Decision:
    """champion: {"version", "val_top1", "dataset_version"} of the current champion, or None.
    rescored_top1: the champion's val top-1 on `dataset_version` when that differs from its own."""
    if champion is None:
        return Decision(CHAMPION, "no champion yet", val_top1)
    version = str(champion["version"])
    if champion.get("dataset_version") == dataset_version and champion.get("val_top1") is not None:
        theirs, where = float(champion["val_top1"]), f"on the same dataset version {dataset_version}"
    elif rescored_top1 is not None:
        theirs = float(rescored_top1)
        where = (f"re-scored on dataset version {dataset_version} "
                 f"(it was trained on {champion.get('dataset_version')})")
    else:
        return Decision(CHALLENGER, f"champion v{version} was trained on dataset version "
                        f"{champion.get('dataset_version')} and could not be re-scored on {dataset_version}; "
                        f"compare with `alexnet evaluate` and `alexnet promote`", val_top1, version, None)
    if val_top1 > theirs:
        return Decision(CHAMPION, f"val top-1 {val_top1:.4f} beats champion v{version}'s {theirs:.4f} {where}",
                        val_top1, version, theirs)
    return Decision(CHALLENGER, f"val top-1 {val_top1:.4f} does not beat champion v{version}'s {theirs:.4f} {where}",
                    val_top1, version, theirs)


def current_champion(client: MlflowClient, name: str) -> dict | None:
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model, or no version holds the alias
        return None
    top1 = mv.tags.get("val_top1")
    return {"version": str(mv.version), "val_top1": float(top1) if top1 else None,
            "dataset_version": mv.tags.get("dataset_version")}


def assign_alias(client: MlflowClient, name: str, version: str, *, val_top1: float, dataset_version: str,
                 rescore: Callable[[str], float | None] | None = None) -> Decision:
    """Record the new version's numbers, decide champion/challenger, set the alias and record why."""
    version = str(version)
    client.set_model_version_tag(name, version, "val_top1", repr(float(val_top1)))  # exact: ties stay ties
    client.set_model_version_tag(name, version, "dataset_version", dataset_version)
    champion = current_champion(client, name)
    if champion is not None and champion["version"] == version:
        champion = None
    rescored = None
    if champion is not None and champion["dataset_version"] != dataset_version and rescore is not None:
        rescored = rescore(champion["version"])
    decision = decide(val_top1, dataset_version, champion, rescored)
    record(client, name, version, decision)
    return decision


def record(client: MlflowClient, name: str, version: str, decision: Decision) -> None:
    tags = {"decision": decision.alias, "decision.reason": decision.reason,
            "decision.val_top1": repr(float(decision.val_top1))}
    if decision.champion_version is not None:
        tags["decision.champion_version"] = decision.champion_version
    if decision.champion_top1 is not None:
        tags["decision.champion_val_top1"] = repr(float(decision.champion_top1))
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=f"{decision.alias}: {decision.reason}")
    client.set_registered_model_alias(name, decision.alias, version)


def promote(client: MlflowClient, name: str, version: str) -> Decision:
    """`alexnet promote`: make VERSION the champion by hand, whatever the numbers say."""
    version = str(version)
    try:
        mv = client.get_model_version(name, version)
    except MlflowException:
        raise UserError(f"model {name!r} has no version {version!r} (see the Models page or `mlflow models`)") from None
    previous = current_champion(client, name)
    before = f"; champion was v{previous['version']}" if previous and previous["version"] != version else ""
    top1 = float(mv.tags.get("val_top1", "nan"))
    decision = Decision(CHAMPION, f"promoted by hand{before}", top1,
                        previous["version"] if previous else None, previous["val_top1"] if previous else None)
    record(client, name, version, decision)
    if mv.aliases and CHALLENGER in mv.aliases:
        client.delete_registered_model_alias(name, CHALLENGER)
    return decision
