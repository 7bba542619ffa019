"""The build agent: a pool of workers that register, take jobs and run them."""

from conveyor.agent.pool import AgentPool
from conveyor.agent.worker import AgentWorker, WorkerOptions

__all__ = ["AgentPool", "AgentWorker", "WorkerOptions"]
