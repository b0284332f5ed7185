"""Routes: calls (see SPEC.md §10)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
