"""Access calls, applications and reviews: the rules, without the database.

Modes follow EuroHPC's access modes:
- playground: small grants, approved automatically on submission while the call has GPU-hours
  left, first come first served;
- fast_lane: bounded size, one reviewer's score decides;
- large_scale: a panel of reviewers, approved when their mean score reaches the threshold.
"""

from __future__ import annotations

from enum import StrEnum

from fabriek.core.errors import IllegalTransition, InvalidRequest


class CallMode(StrEnum):
    PLAYGROUND = "playground"
    FAST_LANE = "fast_lane"
    LARGE_SCALE = "large_scale"


# Reviews a decision needs, by mode (large_scale: a panel; an operator may set more).
DEFAULT_REVIEWERS = {CallMode.PLAYGROUND: 0, CallMode.FAST_LANE: 1, CallMode.LARGE_SCALE: 3}
MIN_SCORE, MAX_SCORE = 1, 5
DEFAULT_THRESHOLD = 3.0


class ApplicationState(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    UNDER_REVIEW = "under_review"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"

    @property
    def is_final(self) -> bool:
        return self in (
            ApplicationState.APPROVED,
            ApplicationState.REJECTED,
            ApplicationState.WITHDRAWN,
        )


_S = ApplicationState
LEGAL_APPLICATION_MOVES: dict[ApplicationState, frozenset[ApplicationState]] = {
    _S.DRAFT: frozenset({_S.SUBMITTED, _S.WITHDRAWN}),
    # A playground application is decided at once, without review.
    _S.SUBMITTED: frozenset({_S.UNDER_REVIEW, _S.APPROVED, _S.REJECTED, _S.WITHDRAWN}),
    _S.UNDER_REVIEW: frozenset({_S.APPROVED, _S.REJECTED, _S.WITHDRAWN}),
    _S.APPROVED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.WITHDRAWN: frozenset(),
}


def check_application_move(
    application_id: int, current: ApplicationState, to: ApplicationState
) -> None:
    if to not in LEGAL_APPLICATION_MOVES[current]:
        raise IllegalTransition(
            f"application {application_id} cannot go from {current.value} to {to.value}"
        )


def check_score(score: int) -> int:
    if not MIN_SCORE <= score <= MAX_SCORE:
        raise InvalidRequest(
            f"a score is a whole number from {MIN_SCORE} to {MAX_SCORE}, not {score}"
        )
    return score


def decide(mode: CallMode, scores: list[int], *, reviewers: int, threshold: float) -> bool | None:
    """The outcome once enough reviews are in: True approve, False reject, None wait for more."""
    if mode == CallMode.PLAYGROUND:
        return True
    if len(scores) < reviewers:
        return None
    return sum(scores) / len(scores) >= threshold
