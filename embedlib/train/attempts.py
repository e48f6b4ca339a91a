"""Which Ray Train run a training is: it resumes only its own interrupted attempt, never another's.

Ray Train resumes whatever run of the same name left checkpoints under its storage. A training job that
reused one name for every run would silently hand back the previous model (no epoch runs) when given another
input. So the Ray Train run name is `<name>-<fingerprint>-<n>`, where the fingerprint covers what the run
trains on and how (the corpus's blocks, classes and labels, every setting); a record per attempt under
`<storage>/_embedlib_attempts/` says whether it finished. A training resumes the latest attempt with its
fingerprint when that one did not finish, and otherwise starts attempt n + 1, from scratch.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from embedlib.root.store import Store

RECORDS = "_embedlib_attempts"


@dataclass(frozen=True)
class Attempt:
    name: str  # the Ray Train run name
    number: int
    fingerprint: str
    resume: bool

    def describe(self) -> str:
        if self.resume:
            return (f"training run {self.name}: resuming its interrupted attempt from its last epoch checkpoint "
                    "(same input, labels and settings)")
        why = "an earlier attempt with this input and these settings finished" if self.number > 1 else \
            "no earlier attempt with this input and these settings"
        return f"training run {self.name}: new, from scratch ({why})"


def fingerprint(config: dict[str, Any], corpus_fingerprint: str) -> str:
    """What a training trains on (the corpus's own fingerprint) and with which settings."""
    text = json.dumps({"config": config, "corpus": corpus_fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def choose(storage: str, base: str, fp: str) -> Attempt:
    """The attempt to run: the latest one of (base, fp) if it did not finish, else a new one."""
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?", base):  # "weekly-": a name left half-made
        from embedlib.errors import UserError

        raise UserError(f"training run name {base!r}: use letters, digits, '.', '_' and '-', beginning and ending "
                        "with a letter or digit")
    store = Store(storage)
    prefix = f"{base}-{fp}-"
    numbers = sorted(int(n[len(prefix):-len(".json")]) for n in store.listdir(RECORDS)
                     if n.startswith(prefix) and n.endswith(".json") and n[len(prefix):-len(".json")].isdigit())
    if numbers:
        last = numbers[-1]
        record = store.read_json(f"{RECORDS}/{prefix}{last}.json") or {}
        if not record.get("finished"):
            return Attempt(f"{prefix}{last}", last, fp, True)
    n = numbers[-1] + 1 if numbers else 1
    return Attempt(f"{prefix}{n}", n, fp, False)


def record(storage: str, attempt: Attempt, finished: bool, **extra: Any) -> None:
    """Write the attempt's record (atomically): started, or finished."""
    Store(storage).write_json(f"{RECORDS}/{attempt.name}.json",
                              {"name": attempt.name, "fingerprint": attempt.fingerprint, "finished": finished,
                               "updated_unix": int(time.time()), **extra})
