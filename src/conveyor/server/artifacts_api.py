"""Artifact endpoints: jobs upload and download with their token; the REST API lists them."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
