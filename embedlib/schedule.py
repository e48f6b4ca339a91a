"""When a cron schedule last fired: the scheduled time a run belongs to, computed inside the run.

A scheduled job that names its run from the clock at submission time gets a new name when a retry crosses a
boundary (a weekly retrain retried after Monday 00:00 UTC is next week's run). Naming it from the schedule's
latest fire time at or before now keeps the name until the schedule fires again, so every retry of a run
finds the same name:

    python -m jobs.train --name "weekly-$(python -m embedlib.schedule 'CRON_TZ=UTC 0 3 * * 0' --format %G-w%V)" ...

KubeRay's RayCronJob (1.6) records the scheduled time only as an annotation of the RayJob it creates
(`ray.io/cronjob-scheduled-timestamp`), and a Kubernetes CronJob only as an annotation of the Job
(`batch.kubernetes.io/cronjob-scheduled-timestamp`); neither reaches the pods' environment, so the job
computes it.

The expressions are those of robfig/cron v3's ParseStandard, which both KubeRay's RayCronJob and the
Kubernetes CronJob controller use: five fields (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or
JAN-DEC, day of week 0-6 or SUN-SAT), each a comma list of `*`, `?`, `N`, `N-M`, with an optional `/STEP`
(`N/STEP` means N to the maximum); day of month and day of week both restricted means either matches; the
descriptors @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly. Times are UTC: an optional
`CRON_TZ=UTC` (or `TZ=UTC`) prefix is accepted, other zones and `@every` are refused.

Stdlib only: the RayJob submitter pod runs this before anything else is imported.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

DEFAULT_FORMAT = "%Y%m%dT%H%MZ"  # 20261122T0300Z: sorts, and fits in paths and Kubernetes names
SEARCH_DAYS = 5 * 366  # robfig/cron gives up after five years too
UTC_NAMES = {"UTC", "Etc/UTC"}

MONTHS = {name: i + 1 for i, name in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
WEEKDAYS = {name: i for i, name in enumerate("sun mon tue wed thu fri sat".split())}
DESCRIPTORS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}


class ScheduleError(ValueError):
    """A cron expression this module cannot (or must not) evaluate."""


@dataclass(frozen=True)
class Field:
    values: frozenset[int]
    star: bool  # `*` or `?` (without a step > 1): robfig/cron's star bit, which decides the day rule


@dataclass(frozen=True)
class Schedule:
    minutes: Field
    hours: Field
    days: Field  # day of month
    months: Field
    weekdays: Field  # 0 = Sunday

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months.values:
            return False
        dom = day.day in self.days.values
        dow = (day.isoweekday() % 7) in self.weekdays.values
        # robfig/cron dayMatches: if either field is a star both must match, else either may
        return (dom and dow) if (self.days.star or self.weekdays.star) else (dom or dow)


def _number(text: str, names: dict[str, int] | None, expr: str) -> int:
    if names and text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        raise ScheduleError(f"not a number: {text!r} in {expr!r}")
    return int(text)


def _field(text: str, low: int, high: int, names: dict[str, int] | None, expr: str) -> Field:
    values: set[int] = set()
    star = False
    for part in text.split(","):
        range_text, _, step_text = part.partition("/")
        if "/" in step_text:
            raise ScheduleError(f"too many slashes: {part!r} in {expr!r}")
        bounds = range_text.split("-")
        if bounds[0] in ("*", "?"):
            if len(bounds) != 1:
                raise ScheduleError(f"a range cannot start with {bounds[0]!r}: {part!r} in {expr!r}")
            start, end, part_star = low, high, True
        else:
            if len(bounds) > 2:
                raise ScheduleError(f"too many hyphens: {part!r} in {expr!r}")
            start = _number(bounds[0], names, expr)
            end = _number(bounds[1], names, expr) if len(bounds) == 2 else start
            part_star = False
        step = 1
        if step_text or part.endswith("/"):
            step = _number(step_text, None, expr)
            if len(bounds) == 1 and not part_star:
                end = high  # "N/STEP" means N to the maximum
            if step > 1:
                part_star = False
        if start < low or end > high or start > end:
            raise ScheduleError(f"{part!r} is outside {low}-{high} in {expr!r}")
        if step == 0:
            raise ScheduleError(f"a step must be positive: {part!r} in {expr!r}")
        values.update(range(start, end + 1, step))
        star = star or part_star
    return Field(frozenset(values), star)


def parse(expr: str) -> Schedule:
    """A cron expression (see the module docstring) as the sets of minutes, hours, days, months and weekdays
    it fires on. Raises ScheduleError for anything robfig/cron would refuse, and for non-UTC zones and
    @every, whose fire times this module cannot compute."""
    text = expr.strip()
    if text.startswith(("TZ=", "CRON_TZ=")):
        zone, _, text = text.partition("=")[2].partition(" ")
        if zone not in UTC_NAMES:
            raise ScheduleError(f"only UTC schedules are supported, not {zone!r}: {expr!r}")
        text = text.strip()
    if text.startswith("@"):
        if text.startswith("@every"):
            raise ScheduleError(f"@every fires relative to when the scheduler started, not at fixed times: {expr!r}")
        if text not in DESCRIPTORS:
            raise ScheduleError(f"unknown descriptor: {expr!r}")
        text = DESCRIPTORS[text]
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(f"expected 5 fields (minute hour day-of-month month day-of-week), found {len(fields)}: {expr!r}")
    minute, hour, dom, month, dow = fields
    return Schedule(_field(minute, 0, 59, None, expr), _field(hour, 0, 23, None, expr),
                    _field(dom, 1, 31, None, expr), _field(month, 1, 12, MONTHS, expr),
                    _field(dow, 0, 6, WEEKDAYS, expr))


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ScheduleError(f"a time without a time zone is ambiguous: {moment.isoformat()}")
    return moment.astimezone(timezone.utc)


def last_fire_time(expr: str, now: datetime) -> datetime:
    """The latest time at or before `now` (an aware datetime) at which `expr` fires, in UTC."""
    schedule = parse(expr)
    now = _utc(now)
    hours = sorted(schedule.hours.values, reverse=True)
    minutes = sorted(schedule.minutes.values, reverse=True)
    for back in range(SEARCH_DAYS):
        day = now.date() - timedelta(days=back)
        if not schedule.day_matches(day):
            continue
        for hour in hours:
            for minute in minutes:
                fire = datetime.combine(day, time(hour, minute), tzinfo=timezone.utc)
                if fire <= now:
                    return fire
    raise ScheduleError(f"{expr!r} did not fire in the {SEARCH_DAYS} days before {now.isoformat()}")


def next_fire_time(expr: str, after: datetime) -> datetime:
    """The first time strictly after `after` at which `expr` fires, in UTC (robfig/cron's Next)."""
    schedule = parse(expr)
    after = _utc(after)
    hours = sorted(schedule.hours.values)
    minutes = sorted(schedule.minutes.values)
    for ahead in range(SEARCH_DAYS):
        day = after.date() + timedelta(days=ahead)
        if not schedule.day_matches(day):
            continue
        for hour in hours:
            for minute in minutes:
                fire = datetime.combine(day, time(hour, minute), tzinfo=timezone.utc)
                if fire > after:
                    return fire
    raise ScheduleError(f"{expr!r} does not fire in the {SEARCH_DAYS} days after {after.isoformat()}")


def _parse_now(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ScheduleError(f"--now {text!r} is not an ISO 8601 time") from None
    return _utc(moment)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embedlib.schedule",
        description="Print the latest time at or before now (UTC) at which a cron schedule fires.")
    parser.add_argument("expr", help="a cron expression, e.g. 'CRON_TZ=UTC 0 3 * * 0' (Sundays 03:00 UTC)")
    parser.add_argument("--format", default=DEFAULT_FORMAT,
                        help=f"strftime format of the output (default {DEFAULT_FORMAT}; the ISO week: %%G-w%%V)")
    parser.add_argument("--now", help="evaluate at this ISO 8601 time instead of now (with a zone, e.g. ...Z)")
    args = parser.parse_args(argv)
    try:
        now = _parse_now(args.now) if args.now else datetime.now(timezone.utc)
        out = last_fire_time(args.expr, now).strftime(args.format)
        if not out.strip():
            raise ScheduleError(f"--format {args.format!r} prints nothing")
    except ScheduleError as exc:
        print(f"embedlib.schedule: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
