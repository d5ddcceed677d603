"""``POST /v1/enroll`` (sync.md §2.3): a one-time code buys a device key its binding."""

from __future__ import annotations

from fastapi import APIRouter, Request

from sync.server import models as m
from sync.server.auth import client_ip
from sync.server.deps import State
from sync.server.enrollment import enroll
from sync.server.errors import ApiError

__all__ = ["router"]

router = APIRouter(tags=["enrolment"])


@router.post("/v1/enroll", response_model=m.EnrollAnswer, summary="Enrol a gate with a one-time code (§2.3)",
             responses={400: {"model": m.ErrorBody}, 403: {"model": m.ErrorBody}, 429: {"model": m.ErrorBody}})
def post_enroll(body: m.EnrollRequest, request: Request, st: State) -> dict[str, object]:
    ip = client_ip(request, st)
    rl = st.config.rate_limit
    st.limiter.check_blocked(ip)
    # 10 failed codes an hour: once spent, even a right code waits (no guessing past the limit).
    st.limiter.check_hourly("enroll_failed", ip, rl.enroll_failed_per_hour, peek=True)
    st.limiter.check_hourly("enroll", ip, rl.enroll_per_hour)
    try:
        return enroll(st, code=body.code, public_key=body.public_key, proof=body.proof, software=body.software)
    except ApiError as exc:
        if exc.code in ("invalid_code", "bad_proof"):
            st.limiter.check_hourly("enroll_failed", ip, rl.enroll_failed_per_hour)
        raise
