"""First-fit admission on one machine: the foundation's engine, replaced by the pool-aware engine later.

Jobs are considered oldest first; each one that fits in what is still free is admitted. A job that does
not fit waits, and a later, smaller job may pass it (no reservation yet: the pool-aware engine adds
backfill with a reserved start for the head job).
"""

from __future__ import annotations

from functools import lru_cache

from fabriek.core.jobs import Resources
from fabriek.scheduling.snapshot import Admission, Decisions, PendingJob, Snapshot


def admit(snapshot: Snapshot) -> Decisions:
    """Decide which pending jobs start now. Pure: the same snapshot always gives the same decisions."""
    free = snapshot.capacity.resources
    free_gpus = set(snapshot.capacity.gpu_ids)
    for running in snapshot.running:
        free = free - running.resources
        free_gpus.difference_update(running.gpu_ids)
    decisions = Decisions()
    for job in snapshot.pending:
        if job.resources.fits_in(free) and job.resources.gpus <= len(free_gpus):
            gpu_ids = tuple(sorted(free_gpus)[: job.resources.gpus])
            free_gpus.difference_update(gpu_ids)
            free = free - job.resources
            decisions.admissions.append(Admission(job.job_id, gpu_ids))
        else:
            decisions.reasons[job.job_id] = waiting_reason(job, free)
    return decisions


def waiting_reason(job: PendingJob, free: Resources) -> str:
    """Name what the job lacks. Kept free of counts that change every pass, so it is rarely rewritten."""
    return _reason(job.resources, free)


@lru_cache(maxsize=4096)
def _reason(want: Resources, free: Resources) -> str:
    # Thousands of waiting jobs ask for the same few shapes: one sentence per shape and free state.
    short = [
        label
        for label, needed, available in (
            ("CPUs", want.cpus, free.cpus),
            ("memory", want.memory_bytes, free.memory_bytes),
            ("GPUs", want.gpus, free.gpus),
        )
        if needed > available
    ]
    if not short:
        return "waiting: the machine is being filled in queue order"
    busy = " and ".join(short)
    return f"waiting for resources: not enough free {busy}; running jobs hold them"
