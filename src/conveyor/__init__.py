"""Conveyor: a self-hosted CI system — dispatch server, build agents and `conveyor run`."""

__version__ = "0.1.0"
