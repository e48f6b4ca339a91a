"""Which Ray Train attempt a training is (pure decisions over a storage folder)."""

from __future__ import annotations

import pytest

from embedlib.train import attempts
from embedlib.errors import UserError


def test_resume_only_an_unfinished_attempt_of_the_same_fingerprint(tmp_path):
    storage = str(tmp_path)
    first = attempts.choose(storage, "weekly", "aaaa")
    assert (first.name, first.resume) == ("weekly-aaaa-1", False)
    attempts.record(storage, first, finished=False)
    again = attempts.choose(storage, "weekly", "aaaa")  # killed, then run again with the same input and settings
    assert (again.name, again.resume) == ("weekly-aaaa-1", True) and "resuming" in again.describe()
    attempts.record(storage, again, finished=True)
    after = attempts.choose(storage, "weekly", "aaaa")  # the same training once more: a new attempt, from scratch
    assert (after.name, after.resume) == ("weekly-aaaa-2", False) and "finished" in after.describe()
    other = attempts.choose(storage, "weekly", "bbbb")  # another input or other settings never resume aaaa's
    assert (other.name, other.resume) == ("weekly-bbbb-1", False)


@pytest.mark.parametrize("name", ["", "weekly-", "-x", "a/b", "a b"])
def test_a_half_made_or_unsafe_run_name_is_refused(tmp_path, name):
    with pytest.raises(UserError, match="training run name"):
        attempts.choose(str(tmp_path), name, "aaaa")
