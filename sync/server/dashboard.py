"""Fleet dashboard pages (sync.md §5.8) — being written."""

from fastapi import APIRouter

router = APIRouter()
