import pytest

from fabriek.core.errors import IllegalTransition, InvalidRequest
from fabriek.core.jobs import (
    LEGAL_TRANSITIONS,
    JobState,
    Resources,
    check_transition,
    validate_request,
)

LEGAL = {
    ("pending", "admitted"),
    ("pending", "cancelled"),
    ("admitted", "running"),
    ("admitted", "failed"),
    ("admitted", "cancelled"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "timed_out"),
    # Preempted to give a pool its guarantee back, and requeued at once.
    ("admitted", "preempted"),
    ("running", "preempted"),
    ("preempted", "pending"),
}


@pytest.mark.parametrize("current", list(JobState))
@pytest.mark.parametrize("target", list(JobState))
def test_transition_table(current: JobState, target: JobState) -> None:
    if (current.value, target.value) in LEGAL:
        check_transition(1, current, target)
    else:
        with pytest.raises(IllegalTransition, match=f"from {current.value} to {target.value}"):
            check_transition(1, current, target)


def test_final_states_have_no_way_out() -> None:
    for state in JobState:
        assert (not LEGAL_TRANSITIONS[state]) == state.is_final


GOOD = {
    "name": "train",
    "argv": ["python", "x.py"],
    "resources": Resources(1, 2**30),
    "time_limit_s": 60,
    "env": {},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": ""}, "job name"),
        ({"name": "a\nb"}, "job name"),
        ({"argv": []}, "command is empty"),
        ({"argv": [""]}, "command is empty"),
        ({"argv": ["a\x00b"]}, "NUL"),
        ({"resources": Resources(0, 2**30)}, "1 to 4096 CPUs"),
        ({"resources": Resources(-2, 2**30)}, "1 to 4096 CPUs"),
        # Beyond a 32-bit column: refused here, not by PostgreSQL with a 500.
        ({"resources": Resources(2**31, 2**30)}, "1 to 4096 CPUs"),
        ({"resources": Resources(1, 10)}, "1M to 1P"),
        ({"resources": Resources(1, 2**60)}, "1M to 1P"),
        ({"resources": Resources(1, 2**30, -1)}, "0 to 64 GPUs"),
        ({"resources": Resources(1, 2**30, 2**31)}, "0 to 64 GPUs"),
        # What exec(2) would refuse ("Argument list too long"), refused before it is queued.
        ({"argv": ["x", "a" * (128 * 1024)]}, "beyond the 131,071 an exec takes"),
        ({"env": {"BIG": "v" * (128 * 1024)}}, "environment variable BIG is"),
        ({"argv": ["x"] + ["a" * 100_000] * 11}, "together, beyond the limit of 1,048,576"),
        ({"env": {f"V{i}": "v" * 100_000 for i in range(11)}}, "together, beyond"),
        ({"env": {"Ä": "x"}}, "invalid environment"),
        ({"time_limit_s": 0}, "more than zero"),
        ({"time_limit_s": 10**9}, "beyond the maximum"),
        ({"env": {"A B": "x"}}, "invalid environment"),
        ({"env": {"FABRIEK_OUTPUT_DIR": "/"}}, "set by fabriek"),
        ({"env": {"CUDA_VISIBLE_DEVICES": "0"}}, "set by fabriek"),
    ],
)
def test_validate_request_rejects(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        validate_request(**{**GOOD, **change})  # type: ignore[arg-type]


def test_validate_request_accepts_a_sane_job() -> None:
    validate_request(**GOOD)  # type: ignore[arg-type]
