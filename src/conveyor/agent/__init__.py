"""The build agent: a pool of workers that register, take jobs and run them."""

from conveyor.agent.pool import AgentPool, WorkerOptions
from conveyor.agent.worker import AgentWorker

__all__ = ["AgentPool", "AgentWorker", "WorkerOptions"]
