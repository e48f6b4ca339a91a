"""embedlib.schedule: the latest fire time of a cron schedule, the scheduled time a run is named after.

The expected values of the robfig/cron cases are robfig/cron v3.0.1's own (spec_test.go, TestActivation and
TestNext, the five-field UTC cases at minute resolution): KubeRay's RayCronJob and the Kubernetes CronJob
controller parse schedules with that library.
"""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from embedlib import schedule
from embedlib.schedule import ScheduleError, last_fire_time, next_fire_time

UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# robfig/cron v3.0.1 spec_test.go TestActivation: (time, spec, fires at that time)
ACTIVATION = [
    ("2012-07-09 15:00", "0/15 * * * *", True),
    ("2012-07-09 15:45", "0/15 * * * *", True),
    ("2012-07-09 15:40", "0/15 * * * *", False),
    ("2012-07-09 15:05", "5/15 * * * *", True),
    ("2012-07-09 15:20", "5/15 * * * *", True),
    ("2012-07-09 15:50", "5/15 * * * *", True),
    ("2012-07-15 15:00", "0/15 * * Jul *", True),
    ("2012-07-15 15:00", "0/15 * * Jun *", False),
    ("2012-07-15 08:30", "30 08 ? Jul Sun", True),
    ("2012-07-15 08:30", "30 08 15 Jul ?", True),
    ("2012-07-16 08:30", "30 08 ? Jul Sun", False),
    ("2012-07-16 08:30", "30 08 15 Jul ?", False),
    ("2012-07-09 15:00", "@hourly", True),
    ("2012-07-09 15:04", "@hourly", False),
    ("2012-07-09 15:00", "@daily", False),
    ("2012-07-09 00:00", "@daily", True),
    ("2012-07-09 00:00", "@weekly", False),
    ("2012-07-08 00:00", "@weekly", True),
    ("2012-07-08 01:00", "@weekly", False),
    ("2012-07-08 00:00", "@monthly", False),
    ("2012-07-01 00:00", "@monthly", True),
    # day of month and day of week both restricted: either matches
    ("2012-07-15 00:00", "* * 1,15 * Sun", True),
    ("2012-06-15 00:00", "* * 1,15 * Sun", True),
    ("2012-08-01 00:00", "* * 1,15 * Sun", True),
    ("2012-07-15 00:00", "* * */10 * Sun", True),
    # one of them a star: both must match
    ("2012-07-15 00:00", "* * * * Mon", False),
    ("2012-07-09 00:00", "* * 1,15 * *", False),
    ("2012-07-15 00:00", "* * 1,15 * *", True),
    ("2012-07-15 00:00", "* * */2 * Sun", True),
]

# robfig/cron v3.0.1 spec_test.go TestNext (the seconds field dropped): (after, spec, next fire time)
NEXT = [
    ("2012-07-09 14:45", "0/15 * * * *", "2012-07-09 15:00"),
    ("2012-07-09 14:59", "0/15 * * * *", "2012-07-09 15:00"),
    ("2012-07-09 15:45", "20-35/15 * * * *", "2012-07-09 16:20"),
    ("2012-07-09 23:46", "*/15 * * * *", "2012-07-10 00:00"),
    ("2012-07-09 23:45", "20-35/15 * * * *", "2012-07-10 00:20"),
    ("2012-07-09 23:35", "20-35/15 1/2 * * *", "2012-07-10 01:20"),
    ("2012-07-09 23:35", "20-35/15 10-12 * * *", "2012-07-10 10:20"),
    ("2012-07-09 23:35", "20-35/15 1/2 */2 * *", "2012-07-11 01:20"),
    ("2012-07-09 23:35", "20-35/15 * 9-20 * *", "2012-07-10 00:20"),
    ("2012-07-09 23:35", "20-35/15 * 9-20 Jul *", "2012-07-10 00:20"),
    ("2012-07-09 23:35", "0 0 9 Apr-Oct ?", "2012-08-09 00:00"),
    ("2012-07-09 23:35", "0 0 */5 Apr,Aug,Oct Mon", "2012-08-01 00:00"),
    ("2012-07-09 23:35", "0 0 */5 Oct Mon", "2012-10-01 00:00"),
    ("2012-07-09 23:35", "0 0 * Feb Mon", "2013-02-04 00:00"),
    ("2012-07-09 23:35", "0 0 * Feb Mon/2", "2013-02-01 00:00"),
    ("2012-07-09 23:35", "0 0 29 Feb ?", "2016-02-29 00:00"),
]


@pytest.mark.parametrize("when,spec,fires", ACTIVATION)
def test_robfig_activation(when: str, spec: str, fires: bool) -> None:
    t = at(when)
    assert (next_fire_time(spec, t - timedelta(seconds=1)) == t) is fires
    assert (last_fire_time(spec, t) == t) is fires


@pytest.mark.parametrize("after,spec,expected", NEXT)
def test_robfig_next(after: str, spec: str, expected: str) -> None:
    assert next_fire_time(spec, at(after)) == at(expected)
    # ... and the last fire time at the next one is that one; a second earlier, it is an earlier one
    assert last_fire_time(spec, at(expected)) == at(expected)
    assert last_fire_time(spec, at(expected) - timedelta(seconds=1)) <= at(after)


def test_weekly_run_keeps_its_week_until_the_schedule_fires_again() -> None:
    """The bug this module fixes: a weekly retrain fired Sunday 03:00 UTC and retried after Monday 00:00
    was named after the new ISO week. Named from the last fire time, every hour of the week agrees."""
    spec = "CRON_TZ=UTC 0 3 * * 0"
    fired = at("2026-11-22 03:00")  # a Sunday, ISO week 2026-w47
    weeks = {last_fire_time(spec, fired + timedelta(hours=h)).strftime("%G-w%V") for h in range(7 * 24)}
    assert weeks == {"2026-w47"}
    assert (fired + timedelta(days=1)).strftime("%G-w%V") == "2026-w48"  # what `date -u +%G-w%V` said
    assert last_fire_time(spec, fired - timedelta(seconds=1)) == at("2026-11-15 03:00")
    assert last_fire_time(spec, fired + timedelta(days=7)) == at("2026-11-29 03:00")


def test_daily_and_seconds() -> None:
    assert last_fire_time("0 2 * * *", at("2026-11-24 02:00:00")) == at("2026-11-24 02:00")
    assert last_fire_time("0 2 * * *", at("2026-11-24 02:00:59")) == at("2026-11-24 02:00")
    assert last_fire_time("0 2 * * *", at("2026-11-24 01:59:59")) == at("2026-11-23 02:00")
    assert last_fire_time("0 2 * * *", at("2026-01-01 00:00")) == at("2025-12-31 02:00")
    assert next_fire_time("0 2 * * *", at("2026-11-24 02:00")) == at("2026-11-25 02:00")


def test_zones() -> None:
    plain = last_fire_time("0 3 * * 0", at("2026-11-24 10:00"))
    for prefix in ("CRON_TZ=UTC ", "TZ=UTC ", "CRON_TZ=Etc/UTC "):
        assert last_fire_time(prefix + "0 3 * * 0", at("2026-11-24 10:00")) == plain
    # any aware time is taken for the instant it is; the answer is in UTC
    berlin = datetime(2026, 11, 24, 11, 0, tzinfo=timezone(timedelta(hours=1)))
    assert last_fire_time("0 3 * * 0", berlin) == plain and plain.tzinfo == UTC
    with pytest.raises(ScheduleError, match="only UTC"):
        last_fire_time("CRON_TZ=Europe/Berlin 0 3 * * 0", berlin)
    with pytest.raises(ScheduleError, match="time zone"):
        last_fire_time("0 3 * * 0", datetime(2026, 11, 24, 10, 0))


@pytest.mark.parametrize("spec", [
    "0 3 * *", "0 3 * * * *", "60 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 * 13 *", "0 0 * * 7",
    "*/0 * * * *", "5-1 * * * *", "1-2-3 * * * *", "1/2/3 * * * *", "x * * * *", "-1 * * * *",
    "0 0 * * Funday", "@every 1h", "@fortnightly", "0 0 30 Feb *",
])
def test_refused(spec: str) -> None:
    with pytest.raises(ScheduleError):
        last_fire_time(spec, at("2026-11-24 10:00"))


def brute_force_last(spec: str, now: datetime) -> datetime:
    """An independent reference: walk back minute by minute, matching each field the obvious way."""
    s = schedule.parse(spec)
    t = now.replace(second=0, microsecond=0)
    for _ in range(40 * 24 * 60):
        dom, dow = t.day in s.days.values, (t.isoweekday() % 7) in s.weekdays.values
        day = (dom and dow) if (s.days.star or s.weekdays.star) else (dom or dow)
        if t.minute in s.minutes.values and t.hour in s.hours.values and t.month in s.months.values and day:
            return t
        t -= timedelta(minutes=1)
    raise AssertionError("no fire within 40 days")


@pytest.mark.parametrize("spec", [
    "0 2 * * *", "0 3 * * 0", "30 12 * * 6", "*/20 9-17 * * 1-5", "5 4 1,15 * Sun", "0 0 */3 * *",
    "45 23 * * sat,sun", "0 6 10-12 * 2",
])
def test_against_brute_force(spec: str) -> None:
    rng = random.Random(spec)
    for _ in range(30):
        now = at("2026-01-01 00:00") + timedelta(seconds=rng.randrange(366 * 86400))
        last = last_fire_time(spec, now)
        assert last == brute_force_last(spec, now), (spec, now)
        nxt = next_fire_time(spec, now)
        assert last <= now < nxt and last_fire_time(spec, nxt - timedelta(seconds=1)) == last


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert schedule.main(["CRON_TZ=UTC 0 3 * * 0", "--now", "2026-11-23T10:00:00Z", "--format", "%G-w%V"]) == 0
    assert capsys.readouterr().out == "2026-w47\n"
    assert schedule.main(["0 2 * * *", "--now", "2026-11-24T01:00:00+00:00"]) == 0
    assert capsys.readouterr().out == "20261123T0200Z\n"
    assert schedule.main(["0 2 * * 8", "--now", "2026-11-24T01:00:00Z"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and out.err.startswith("embedlib.schedule: ")
    assert schedule.main(["0 2 * * *", "--now", "2026-11-24T01:00:00"]) == 2  # no zone: refused
    assert "time zone" in capsys.readouterr().err


def test_module_runs_as_a_command_and_imports_only_the_standard_library() -> None:
    """The RayJob submitter runs it in a command substitution: it must print one line and load fast."""
    code = ("import sys, runpy; sys.argv = ['x', '0 3 * * 0', '--now', '2026-11-23T10:00:00Z'];\n"
            "try:\n    runpy.run_module('embedlib.schedule', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = sorted(m for m in ('torch', 'ray', 'numpy', 'pyarrow', 'duckdb') if m in sys.modules)\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "20261122T0300Z\n"
    proc = subprocess.run([sys.executable, "-m", "embedlib.schedule", "0 3 * * 0", "--format", "%G-w%V"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and len(proc.stdout.strip().split("\n")) == 1, proc.stderr
