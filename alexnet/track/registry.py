"""Champion/challenger: which registered version serves as `models:/NAME@champion`.

A new version takes the `champion` alias only if its val top-1 beats the current champion's
under the same evaluation: the same val split of the same dataset version, scored the same way
(centre crop, or the paper's 10 crops), each model at its own input size, by
`alexnet.serve.predict.evaluate`. Each version records its evaluation in its tags (`val_top1`,
`dataset_version`, `eval.ten_crop`, ...). When the champion's evaluation differs from the new
version's, the champion is re-scored with the new version's (the caller passes `rescore`); when
that is impossible (other classes, an unreadable model), the new version is `challenger` and a
person decides with `alexnet evaluate` and `alexnet promote`. Ties keep the current champion.

Moving the alias is read-decide-write; two runs finishing together must not both win against
the same old champion. The write happens under a lock held in the registry itself (a registered
model named NAME.alias-lock, whose creation is atomic in every MLflow store), and only if the
champion is still the one the decision was made against; otherwise the decision is made again.
"""

from __future__ import annotations

import os
import random
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.errors import UserError

CHAMPION = "champion"
CHALLENGER = "challenger"
LOCK_SUFFIX = ".alias-lock"
LOCK_WAIT_S = 180.0  # how long to wait for another process's alias move (each takes well under a second)
LOCK_STALE_S = 600.0  # a lock this old was left by a killed process: it is broken
DECIDE_ROUNDS = 5  # decisions made again because the champion moved meanwhile, before giving up
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # no such model, or no version has the alias


class RegistryBusy(UserError):
    """The alias lock stayed held, or the champion kept moving."""


@dataclass(frozen=True)
class Evaluation:
    """A version's score and exactly how it was obtained."""

    dataset_version: str
    ten_crop: bool
    top1: float
    top5: float | None = None
    images: int | None = None

    def same_as(self, other: "Evaluation") -> bool:
        """Scored the same way on the same images: the top-1s compare."""
        return (self.dataset_version, self.ten_crop) == (other.dataset_version, other.ten_crop)

    def describe(self) -> str:
        return f"{'10-crop' if self.ten_crop else 'centre-crop'} val top-1 on dataset version {self.dataset_version}"

    def tags(self) -> dict[str, str]:
        tags = {"val_top1": repr(float(self.top1)), "dataset_version": self.dataset_version,  # repr: ties stay ties
                "eval.ten_crop": str(self.ten_crop).lower()}
        if self.top5 is not None:
            tags["eval.top5"] = repr(float(self.top5))
        if self.images is not None:
            tags["eval.images"] = str(int(self.images))
        return tags

    @classmethod
    def from_tags(cls, tags: dict) -> "Evaluation | None":
        """None for a version registered without a complete record of how it was scored."""
        if not tags.get("val_top1") or not tags.get("dataset_version") or tags.get("eval.ten_crop") not in ("true", "false"):
            return None
        return cls(tags["dataset_version"], tags["eval.ten_crop"] == "true", float(tags["val_top1"]),
                   float(tags["eval.top5"]) if tags.get("eval.top5") else None,
                   int(tags["eval.images"]) if tags.get("eval.images") else None)


@dataclass(frozen=True)
class Champion:
    version: str
    evaluation: Evaluation | None  # None: its evaluation is unknown (re-score it to compare)


@dataclass(frozen=True)
class Decision:
    alias: str  # champion | challenger
    reason: str
    val_top1: float  # the new version's
    champion_version: str | None = None  # the champion it was compared with
    champion_top1: float | None = None  # that champion's top-1 under the new version's evaluation


def needs_rescore(new: Evaluation, champion: Champion | None) -> bool:
    return champion is not None and (champion.evaluation is None or not champion.evaluation.same_as(new))


def decide(new: Evaluation, champion: Champion | None, rescored_top1: float | None = None,
           why_not: str = "") -> Decision:
    """rescored_top1: the champion's top-1 under `new`'s evaluation, when its own differs
    (why_not: why there is none)."""
    if champion is None:
        return Decision(CHAMPION, "no champion yet", new.top1)
    version = champion.version
    if champion.evaluation is not None and champion.evaluation.same_as(new):
        theirs, how = champion.evaluation.top1, f"with the same evaluation ({new.describe()})"
    elif rescored_top1 is not None:
        theirs = float(rescored_top1)
        recorded = champion.evaluation.describe() if champion.evaluation else "no comparable evaluation"
        how = f"re-scored with this version's evaluation ({new.describe()}; it had recorded {recorded})"
    else:
        recorded = champion.evaluation.describe() if champion.evaluation else "no comparable evaluation"
        return Decision(CHALLENGER, f"champion v{version} recorded {recorded} and could not be re-scored with "
                        f"{new.describe()} ({why_not or 'no re-score here'}); compare with `alexnet evaluate` "
                        f"and `alexnet promote`", new.top1, version, None)
    if new.top1 > theirs:
        return Decision(CHAMPION, f"val top-1 {new.top1:.4f} beats champion v{version}'s {theirs:.4f} {how}",
                        new.top1, version, theirs)
    return Decision(CHALLENGER, f"val top-1 {new.top1:.4f} does not beat champion v{version}'s {theirs:.4f} {how}",
                    new.top1, version, theirs)


def current_champion(client: MlflowClient, name: str) -> Champion | None:
    """The version holding the alias, or None when there is none. A store that does not answer
    raises: "no answer" must never read as "no champion"."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        if err.error_code in NOT_FOUND:
            return None
        raise
    return Champion(str(mv.version), Evaluation.from_tags(mv.tags))


@contextmanager
def alias_lock(client: MlflowClient, name: str):
    """Hold NAME.alias-lock (a registered model: creating one that exists fails in every store)."""
    lock = name + LOCK_SUFFIX
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    description = f"held while the aliases of {name} move; not a model"
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            client.create_registered_model(lock, tags={"owner": owner}, description=description)
            break
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held = _touched(client, lock, description)
        except MlflowException as err:
            if err.error_code in NOT_FOUND:
                continue  # released meanwhile
            raise
        # The lock's age on the store's own clock: its creation and this touch were both stamped
        # there, so a waiter whose clock is off by minutes neither breaks a live lock nor keeps a dead one.
        age_s = (held.last_updated_timestamp - held.creation_timestamp) / 1000
        if age_s >= LOCK_STALE_S:
            print(f"[registry] breaking {lock}, held for {age_s:.0f} s by {held.tags.get('owner')} "
                  f"(a process that was killed)", file=sys.stderr)
            _delete_lock(client, lock, owner=held.tags.get("owner"))
            continue
        if time.monotonic() > deadline:
            raise RegistryBusy(f"model {name}: {lock} is held by {held.tags.get('owner')} (for {age_s:.0f} s); "
                               f"another run is moving the aliases: try again, or delete the registered model "
                               f"{lock} if no such process exists")
        time.sleep(random.uniform(0.1, 0.5))
    try:
        yield
    finally:
        _delete_lock(client, lock, owner=owner)


def _touched(client: MlflowClient, lock: str, description: str):
    """The lock, its last-updated time set to now by the store (rewriting its description as it was)."""
    client.update_registered_model(lock, description=description)
    return client.get_registered_model(lock)


def _delete_lock(client: MlflowClient, lock: str, *, owner: str | None) -> None:
    """Delete the lock if `owner` still holds it (a stale one broken meanwhile is someone else's now)."""
    try:
        if client.get_registered_model(lock).tags.get("owner") == owner:
            client.delete_registered_model(lock)
    except MlflowException as err:
        if err.error_code not in NOT_FOUND:
            raise


def assign_alias(client: MlflowClient, name: str, version: str, evaluation: Evaluation, *,
                 rescore: Callable[[str], tuple[float | None, str]] | None = None) -> Decision:
    """Record the new version's evaluation, decide champion/challenger, move the alias and record why.

    rescore(champion_version) -> (its top-1 under `evaluation`'s protocol, or None, and why not).
    It runs outside the lock (it may take minutes); the alias moves under it, and only if the
    champion is still the one compared against, else the decision is made again."""
    version = str(version)
    for key, value in evaluation.tags().items():
        client.set_model_version_tag(name, version, key, value)
    for _ in range(DECIDE_ROUNDS):
        champion = current_champion(client, name)
        if champion is not None and champion.version == version:  # registered earlier, e.g. by a retried register
            mv = client.get_model_version(name, version)
            return Decision(CHAMPION, mv.tags.get("decision.reason", "already champion"), evaluation.top1)
        rescored, why_not = None, ""
        if needs_rescore(evaluation, champion) and rescore is not None:
            rescored, why_not = rescore(champion.version)
        decision = decide(evaluation, champion, rescored, why_not)
        with alias_lock(client, name):
            now = current_champion(client, name)
            if (now.version if now else None) == (champion.version if champion else None):
                record(client, name, version, decision)
                return decision
        print(f"[registry] {name}'s champion moved to v{now.version if now else None} while v{version} was being "
              f"compared with v{champion.version if champion else None}; comparing again", file=sys.stderr)
    raise RegistryBusy(f"model {name}: the champion kept moving while v{version} was compared {DECIDE_ROUNDS} times; "
                       f"run `alexnet evaluate` and `alexnet promote {version}` by hand if it should win")


def record(client: MlflowClient, name: str, version: str, decision: Decision) -> None:
    """The decision as tags and description of the version, then the alias (callers hold the lock)."""
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
    except MlflowException as err:
        if err.error_code not in NOT_FOUND:
            raise
        raise UserError(f"model {name!r} has no version {version!r} (see the Models page or `mlflow models`)") from None
    with alias_lock(client, name):
        previous = current_champion(client, name)
        before = f"; champion was v{previous.version}" if previous and previous.version != version else ""
        theirs = previous.evaluation.top1 if previous and previous.evaluation else None
        decision = Decision(CHAMPION, f"promoted by hand{before}", float(mv.tags.get("val_top1", "nan")),
                            previous.version if previous else None, theirs)
        record(client, name, version, decision)
        if mv.aliases and CHALLENGER in mv.aliases:
            client.delete_registered_model_alias(name, CHALLENGER)
    return decision


def ensure_version(client: MlflowClient, name: str, model_uri: str, run_id: str) -> str:
    """The version of NAME registered from `model_uri` (a models:/m-ID URI of `run_id`): created
    now, or found when an earlier attempt created it and its answer was lost. Waits until READY."""
    model_id = model_uri.rsplit("/", 1)[-1]
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code not in NOT_FOUND:
            raise
        try:
            client.create_registered_model(name)
        except MlflowException as err2:
            if err2.error_code != "RESOURCE_ALREADY_EXISTS":  # another run created it meanwhile
                raise
    found = [mv for mv in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
             if mv.source == model_uri or getattr(mv, "model_id", None) == model_id]
    mv = min(found, key=lambda v: int(v.version)) if found else client.create_model_version(
        name, model_uri, run_id=run_id, model_id=model_id)
    deadline = time.monotonic() + 300
    while mv.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(1)
        mv = client.get_model_version(name, mv.version)
    if mv.status != "READY":
        raise MlflowException(f"model version {name}/{mv.version} is {mv.status}: {mv.status_message or ''}")
    return str(mv.version)
