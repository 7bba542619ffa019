"""What a job may do to its own build with its token: meta-data, annotations, steps, cancel."""

from __future__ import annotations

from fastapi import APIRouter

from conveyor import protocol as p

router = APIRouter(prefix=p.API_PREFIX)
