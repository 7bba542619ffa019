"""Jobs: state changes are compare-and-set on the current state, so two writers never both win."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, Update, bindparam, func, select, text, update

from conveyor.errors import InvalidStateError, NotFoundError
from conveyor.protocol import TERMINAL_JOB_STATES, JobState, can_transition
from conveyor.storage import tables as t
from conveyor.storage.queries.base import QueryBase, new_id, utcnow
from conveyor.storage.rows import JobRow, NewJob

# Hot statements, built once: building a statement anew costs about as much as running it on
# SQLite. Bound names in an UPDATE must differ from column names.
_BY_ID = select(t.jobs).where(t.jobs.c.id == bindparam("of_job"))
_LOCK_IF_FREE = (
    select(t.jobs.c.id)
    .where(t.jobs.c.id == bindparam("of_job"), t.jobs.c.state == "scheduled")
    .with_for_update(skip_locked=True)
)
_ASSIGNED_TO = select(t.jobs).where(
    t.jobs.c.agent_id == bindparam("of_agent"), t.jobs.c.state == "assigned"
)
_SCHEDULE_STEP = (
    update(t.jobs)
    .where(t.jobs.c.step_id == bindparam("of_step"), t.jobs.c.state == "pending")
    .values(state="scheduled", runnable_at=bindparam("now"))
)
_SKIP_STEP = (
    update(t.jobs)
    .where(t.jobs.c.step_id == bindparam("of_step"), t.jobs.c.state.in_(["pending", "scheduled"]))
    .values(state="skipped", finished_at=bindparam("now"))
)
_LIVE_IN_STEP = (
    select(t.jobs.c.id)
    .where(
        t.jobs.c.step_id == bindparam("of_step"),
        t.jobs.c.state.not_in([s.value for s in TERMINAL_JOB_STATES]),
    )
    .limit(1)
)
_START = (
    update(t.jobs)
    .where(
        t.jobs.c.id == bindparam("of_job"),
        t.jobs.c.state.in_(["assigned", "accepted"]),
        t.jobs.c.agent_id == bindparam("held_by"),
    )
    .values(
        state="running",
        started_at=bindparam("started"),
        # A job pushed with its token starts straight from `assigned`: accepted now.
        accepted_at=func.coalesce(
            t.jobs.c.accepted_at, bindparam("now", type_=t.jobs.c.accepted_at.type)
        ),
    )
    .returning(t.jobs.c.build_id)
)
_LOCK_GROUP = text("SELECT pg_advisory_xact_lock(hashtext(:group))")
_TRY_LOCK_GROUP = text("SELECT pg_try_advisory_xact_lock(hashtext(:group))")


@lru_cache(maxsize=256)
def _transition(froms: tuple[str, ...], held: bool, columns: tuple[str, ...]) -> Update:
    """The compare-and-set of `transition_job` for one shape of call."""
    where = [t.jobs.c.id == bindparam("of_job"), t.jobs.c.state.in_(froms)]
    if held:
        where.append(t.jobs.c.agent_id == bindparam("held_by"))
    values: dict[str, Any] = {"state": bindparam("to_state")}
    values.update({c: bindparam(f"new_{c}") for c in columns})
    return update(t.jobs).where(*where).values(values)


@lru_cache(maxsize=512)
def _candidates(limit: int) -> Select[Any]:
    return (
        select(t.jobs)
        .where(t.jobs.c.state == "scheduled")
        .order_by(t.jobs.c.priority.desc(), t.jobs.c.runnable_at, t.jobs.c.id)
        .limit(limit)
    )


@lru_cache(maxsize=64)
def _of_agent(states: tuple[str, ...]) -> Select[Any]:
    return select(t.jobs).where(
        t.jobs.c.agent_id == bindparam("of_agent"), t.jobs.c.state.in_(states)
    )


def job_row(r: Any) -> JobRow:
    return JobRow(
        id=r.id,
        build_id=r.build_id,
        step_id=r.step_id,
        state=r.state,
        label=r.label,
        command=r.command,
        env=dict(r.env),
        agent_query=dict(r.agent_query),
        priority=r.priority,
        attempt=r.attempt,
        agent_id=r.agent_id,
        exit_status=r.exit_status,
        signal=r.signal,
        signal_reason=r.signal_reason,
        chunks_failed_count=r.chunks_failed_count,
        log_size=r.log_size,
        created_at=r.created_at,
        runnable_at=r.runnable_at,
        assigned_at=r.assigned_at,
        accepted_at=r.accepted_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        concurrency_group=r.concurrency_group,
        concurrency_limit=r.concurrency_limit,
        soft_fail=r.soft_fail,
        soft_failed=bool(r.soft_failed),
        timeout_minutes=r.timeout_minutes,
        timed_out=bool(r.timed_out),
    )


def new_job_values(build_id: str, step_id: str, job: NewJob, now: datetime) -> dict[str, Any]:
    """The row of a new pending job."""
    return {
        "id": new_id(),
        "build_id": build_id,
        "step_id": step_id,
        "state": "pending",
        "label": job.label,
        "command": job.command,
        "env": job.env,
        "agent_query": job.agent_query,
        "priority": job.priority,
        "attempt": 1,
        "chunks_failed_count": 0,
        "log_size": 0,
        "created_at": now,
        "concurrency_group": job.concurrency_group,
        "concurrency_limit": job.concurrency_limit,
        "soft_fail": job.soft_fail,
        "timeout_minutes": job.timeout_minutes,
    }


class JobQueries(QueryBase):
    async def get_job(self, job_id: str) -> JobRow:
        r = (await self.conn.execute(_BY_ID, {"of_job": job_id})).first()
        if r is None:
            raise NotFoundError(f"no job {job_id}")
        return job_row(r)

    async def transition_job(
        self,
        job_id: str,
        from_states: Iterable[str],
        to_state: str,
        *,
        held_by: str | None = None,
        **values: Any,
    ) -> bool:
        """Move a job to `to_state` if it is in one of `from_states` (and, with `held_by`,
        assigned to that agent). False if it was not."""
        froms = list(from_states)
        target = JobState(to_state)
        if not all(can_transition(JobState(f), target) for f in froms):
            raise InvalidStateError(f"no job goes from {froms} to {to_state} (JOB_TRANSITIONS)")
        statement = _transition(tuple(froms), held_by is not None, tuple(values))
        params = {"of_job": job_id, "to_state": to_state, "held_by": held_by}
        params.update({f"new_{c}": v for c, v in values.items()})
        if held_by is None:
            del params["held_by"]
        result = await self.conn.execute(statement, params)
        if result.rowcount and (to_state == "scheduled" or target.terminal):
            # Runnable again; or ended, and its concurrency group may have room now.
            self.changes.runnable = True
        return bool(result.rowcount)

    async def require_transition(
        self,
        job_id: str,
        from_states: Iterable[str],
        to_state: str,
        *,
        held_by: str | None = None,
        **values: Any,
    ) -> None:
        froms = list(from_states)
        if not await self.transition_job(job_id, froms, to_state, held_by=held_by, **values):
            job = await self.get_job(job_id)
            raise InvalidStateError(f"job {job_id} is {job.state}, not {' or '.join(froms)}")

    async def start_job(self, job_id: str, agent_id: str, started_at: datetime) -> str | None:
        """Compare-and-set: the job, assigned or accepted and held by `agent_id`, runs from
        `started_at`. One statement; returns the job's build id, or None if it was not so
        (read the job to say why)."""
        result = await self.conn.execute(
            _START,
            {"of_job": job_id, "held_by": agent_id, "started": started_at, "now": utcnow()},
        )
        row = result.first()
        return None if row is None else str(row.build_id)

    async def cancel_build_jobs(self, build_id: str) -> None:
        """Jobs nothing runs yet are canceled; jobs an agent runs go to `canceling`."""
        await self._cancel_jobs(t.jobs.c.build_id == build_id)

    async def cancel_step_jobs(self, step_id: str) -> None:
        """Like `cancel_build_jobs`, for one step."""
        await self._cancel_jobs(t.jobs.c.step_id == step_id)

    async def _cancel_jobs(self, which: Any) -> None:
        # Whose tokens and which agents: not read here (a cancel is rare, and this is four
        # statements already); whoever keeps them in memory looks again.
        self.changes.revoked_unknown = True
        self.changes.freed_unknown = True
        assigned = select(t.jobs.c.id).where(which, t.jobs.c.state == "assigned")
        # Agents that were offered one of these jobs hold nothing any more.
        await self.conn.execute(
            update(t.agents)
            .where(t.agents.c.current_job_id.in_(assigned.scalar_subquery()))
            .values(current_job_id=None)
        )
        # A job pushed with its token is `assigned`: that token must not start it now.
        await self.conn.execute(
            update(t.tokens)
            .where(
                t.tokens.c.job_id.in_(assigned.scalar_subquery()), t.tokens.c.revoked_at.is_(None)
            )
            .values(revoked_at=utcnow())
        )
        await self.conn.execute(
            update(t.jobs)
            .where(which, t.jobs.c.state.in_(["pending", "scheduled", "assigned"]))
            .values(state="canceled", finished_at=utcnow())
        )
        await self.conn.execute(
            update(t.jobs)
            .where(which, t.jobs.c.state.in_(["accepted", "running"]))
            .values(state="canceling")
        )

    async def schedule_step_jobs(self, step_id: str) -> datetime:
        """The step's pending jobs are runnable from now (returned: their `runnable_at`)."""
        now = utcnow()
        result = await self.conn.execute(_SCHEDULE_STEP, {"of_step": step_id, "now": now})
        if result.rowcount:
            self.changes.runnable = True
        return now

    async def step_has_live_jobs(self, step_id: str) -> bool:
        """Whether a job of the step has not ended (any attempt)."""
        return (await self.conn.execute(_LIVE_IN_STEP, {"of_step": step_id})).first() is not None

    async def skip_step_jobs(self, step_id: str) -> datetime:
        """The step's jobs that did not start are skipped (returned: their `finished_at`)."""
        now = utcnow()
        await self.conn.execute(_SKIP_STEP, {"of_step": step_id, "now": now})
        return now

    async def dispatch_candidates(self, limit: int, *, exclude: Iterable[str] = ()) -> list[JobRow]:
        """Runnable jobs in dispatch order: priority first, then the longest waiting.

        Nothing is locked here: a claimer locks only the one job it takes (`lock_if_free`), so
        claimers at the same moment never starve each other.
        """
        q = _candidates(limit)
        excluded = list(exclude)
        if excluded:
            q = q.where(t.jobs.c.id.not_in(excluded))
        return [job_row(r) for r in await self.conn.execute(q)]

    async def lock_if_free(self, job_id: str) -> bool:
        """Lock a still-runnable job for this transaction; False if it is taken or another
        claimer holds it right now (PostgreSQL skips it instead of waiting). SQLite has one
        writer: the compare-and-set that follows is enough there."""
        if self.backend != "postgresql":
            return True
        row = (await self.conn.execute(_LOCK_IF_FREE, {"of_job": job_id})).first()
        return row is not None

    async def assigned_job(self, agent_id: str) -> JobRow | None:
        r = (await self.conn.execute(_ASSIGNED_TO, {"of_agent": agent_id})).first()
        return None if r is None else job_row(r)

    async def insert_attempt(self, job: JobRow, *, state: str = "scheduled") -> str:
        """A new attempt of a finished job, runnable at once (or `pending`); the earlier attempt
        stays."""
        job_id = new_id()
        now = utcnow()
        await self.conn.execute(
            t.jobs.insert().values(
                id=job_id,
                build_id=job.build_id,
                step_id=job.step_id,
                state=state,
                label=job.label,
                command=job.command,
                env=job.env,
                agent_query=job.agent_query,
                priority=job.priority,
                attempt=job.attempt + 1,
                chunks_failed_count=0,
                log_size=0,
                created_at=now,
                runnable_at=now if state == "scheduled" else None,
                concurrency_group=job.concurrency_group,
                concurrency_limit=job.concurrency_limit,
                soft_fail=job.soft_fail,
                timeout_minutes=job.timeout_minutes,
            )
        )
        if state == "scheduled":
            self.changes.runnable = True
        return job_id

    async def overdue_jobs(self, now: datetime) -> list[JobRow]:
        """Jobs running past their step's `timeout_in_minutes`."""
        rows = await self.conn.execute(
            select(t.jobs).where(
                t.jobs.c.timeout_minutes.is_not(None),
                t.jobs.c.state.in_(["accepted", "running"]),
            )
        )
        overdue = []
        for row in rows:
            job = job_row(row)
            began = job.started_at or job.accepted_at
            assert job.timeout_minutes is not None
            if began is not None and (now - began).total_seconds() > job.timeout_minutes * 60:
                overdue.append(job)
        return overdue

    async def set_soft_failed(self, job_id: str) -> None:
        await self.conn.execute(update(t.jobs).where(t.jobs.c.id == job_id).values(soft_failed=1))

    async def running_in_group(self, group: str) -> int:
        """How many jobs of a concurrency group hold a slot (assigned to finished)."""
        r = (
            await self.conn.execute(
                select(func.count())
                .select_from(t.jobs)
                .where(
                    t.jobs.c.concurrency_group == group,
                    t.jobs.c.state.in_(["assigned", "accepted", "running", "canceling"]),
                )
            )
        ).one()
        return int(r[0])

    async def first_waiting_in_group(self, group: str) -> str | None:
        """The job of the group that has waited longest: it goes first (ordered groups)."""
        r = (
            await self.conn.execute(
                select(t.jobs.c.id)
                .where(t.jobs.c.concurrency_group == group, t.jobs.c.state == "scheduled")
                .order_by(t.jobs.c.runnable_at, t.jobs.c.created_at, t.jobs.c.id)
                .limit(1)
            )
        ).first()
        return None if r is None else str(r.id)

    async def lock_group(self, group: str, *, wait: bool = True) -> bool:
        """Serialise claims within one concurrency group (PostgreSQL; SQLite has one writer).
        Without `wait`, False when another transaction holds the group right now."""
        if self.backend != "postgresql":
            return True
        if wait:
            await self.conn.execute(_LOCK_GROUP, {"group": group})
            return True
        return bool((await self.conn.execute(_TRY_LOCK_GROUP, {"group": group})).scalar())

    async def stale_assignments(self, before: datetime) -> list[JobRow]:
        rows = await self.conn.execute(
            select(t.jobs).where(t.jobs.c.state == "assigned", t.jobs.c.assigned_at < before)
        )
        return [job_row(r) for r in rows]

    async def jobs_of_agent(self, agent_id: str, states: Iterable[str]) -> list[JobRow]:
        rows = await self.conn.execute(_of_agent(tuple(states)), {"of_agent": agent_id})
        return [job_row(r) for r in rows]
