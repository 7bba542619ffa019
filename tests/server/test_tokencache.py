"""The token cache: live tokens by hash, for a while, forgotten when a transaction revokes them."""

from __future__ import annotations

from conveyor.server.tokencache import TokenCache
from conveyor.storage.queries.base import TxChanges
from conveyor.storage.rows import TokenRow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def job_token(n: int, agent: str = "agent-1") -> TokenRow:
    return TokenRow(id=f"t{n}", kind="job", agent_id=agent, job_id=f"job-{n}")


def test_a_token_is_kept_for_its_ttl_and_then_read_again() -> None:
    clock = Clock()
    cache = TokenCache(5.0, clock=clock)
    cache.put("h1", job_token(1), generation=cache.generation)
    clock.now += 4.9
    assert cache.get("h1") == job_token(1)
    clock.now += 0.2
    assert cache.get("h1") is None
    assert len(cache) == 0


def test_expired_tokens_do_not_pile_up() -> None:
    clock = Clock()
    cache = TokenCache(1.0, clock=clock)
    for n in range(100):
        cache.put(f"h{n}", job_token(n), generation=cache.generation)
        clock.now += 0.1
    # Only those of the last second are held.
    assert 9 <= len(cache) <= 11


def test_a_ttl_of_zero_keeps_nothing() -> None:
    cache = TokenCache(0)
    cache.put("h1", job_token(1), generation=cache.generation)
    cache.committed(TxChanges(tokens_created=[("h2", job_token(2))]))
    assert cache.get("h1") is None and cache.get("h2") is None


def test_revocations_drop_the_tokens_of_their_jobs_and_agents() -> None:
    cache = TokenCache()
    cache.put("a", job_token(1, agent="agent-1"), generation=0)
    cache.put("b", job_token(2, agent="agent-2"), generation=0)
    cache.put("c", job_token(3, agent="agent-3"), generation=0)
    agent = TokenRow(id="t9", kind="agent", agent_id="agent-3", job_id=None)
    cache.put("d", agent, generation=0)
    cache.committed(TxChanges(revoked_job_tokens={"job-1"}))
    assert cache.get("a") is None
    assert cache.get("b") is not None
    # An agent's revocation takes its job tokens too (they are bound to it).
    cache.committed(TxChanges(revoked_agent_tokens={"agent-3"}))
    assert cache.get("c") is None and cache.get("d") is None
    assert cache.get("b") is not None
    # A cancel revokes without saying whose: everything goes.
    cache.committed(TxChanges(revoked_unknown=True))
    assert len(cache) == 0


def test_a_lookup_that_began_before_a_revocation_is_not_kept() -> None:
    """A request read the token, a revocation committed, then the request stores what it
    read: that row may be the one from before the revocation."""
    cache = TokenCache()
    began = cache.generation
    cache.committed(TxChanges(revoked_job_tokens={"job-7"}))
    cache.put("h", job_token(7), generation=began)
    assert cache.get("h") is None
    cache.put("h", job_token(7), generation=cache.generation)
    assert cache.get("h") == job_token(7)


def test_tokens_created_by_a_transaction_are_kept_unless_it_also_revoked_them() -> None:
    cache = TokenCache()
    cache.committed(
        TxChanges(
            tokens_created=[("new", job_token(1)), ("again", job_token(2))],
            revoked_job_tokens={"job-2"},  # a new token for job 2 replaced its older ones
        )
    )
    assert cache.get("new") == job_token(1)
    # Which of job 2's tokens the revocation meant is not known here: read it again.
    assert cache.get("again") is None
