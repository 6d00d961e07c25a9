"""Stopping a render between two denoising steps: the exception a step callback raises, and the small codes
that carry its reason to the other ranks of a group (a broadcast after each step, or a disaggregated hand-off).

It lives beside the denoising loop because every layer that runs steps must recognise it: the engine's step
controls raise it (:mod:`wan_dist.engine.control`), the parallel stages pass it from one stage to the next.
"""

from __future__ import annotations

__all__ = ["StopRender", "STOP_CODES", "stop_code", "stop_reason"]


class StopRender(Exception):
    """Raised by a step control to stop a render between two steps; every rank then raises it too.

    ``reason``: why, e.g. "cancelled" or "lease_lost" (see :data:`STOP_CODES` for what survives the
    broadcast to the other ranks).
    """

    def __init__(self, reason: str = "stopped"):
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self):  # crosses Ray (rank -> driver) as itself, reason included
        return (StopRender, (self.reason,))

    def __str__(self) -> str:
        return f"render stopped: {self.reason}"


# The code the result rank broadcasts after every step. 0 lets every rank go on; any other code makes
# every rank raise StopRender with the reason below. Reasons not in this table travel as 3 ("stopped"):
# the other ranks only need to stop; the result rank's own exception (the one RenderGroup.wait reports
# as the request's cause) keeps the exact reason.
STOP_CODES: dict[int, str] = {1: "cancelled", 2: "lease_lost", 3: "stopped"}
_CODE_OF = {reason: code for code, reason in STOP_CODES.items()}


def stop_code(reason: str) -> int:
    """The broadcast code of a stop ``reason`` (never 0)."""
    return _CODE_OF.get(reason, 3)


def stop_reason(code: int) -> str | None:
    """The reason a broadcast code stands for; None for 0 (go on)."""
    if code == 0:
        return None
    return STOP_CODES.get(code, "stopped")
