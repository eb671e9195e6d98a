"""API schemas: errors, health, who you are, the factory now (`fabriek partitions`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from fabriek.core.identity import Network
from fabriek.core.tenancy import (
    Identity,
)
from fabriek.server.schemas.jobs import ResourcesOut
from fabriek.server.schemas.tenancy import TokenOut

if TYPE_CHECKING:
    from fabriek.server.services.partitions import FactoryNow, PartitionNow


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    version: str
    database: str
    backend: str
    workdir_max_bytes: int = Field(description="Largest workdir an upload may unpack to.")
    workdir_max_entries: int = Field(
        100_000, description="Most files, directories and links a workdir archive may hold."
    )
    api_processes: int = Field(description="Processes serving this API.")


class MembershipOut(BaseModel):
    name: str
    role: str
    organisation: str | None = Field(None, description="A project's organisation.")


class Me(BaseModel):
    id: int
    name: str
    is_operator: bool
    is_reviewer: bool
    organisations: list[MembershipOut] = Field(
        default_factory=list, description="The organisations you belong to, with your role."
    )
    projects: list[MembershipOut] = Field(
        default_factory=list, description="The projects you are a member of, with your role."
    )
    token: TokenOut | None = Field(None, description="The token this request came with.")

    @classmethod
    def of(cls, me: Identity) -> Me:
        return cls(
            id=me.user_id,
            name=me.user.name,
            is_operator=me.user.is_operator,
            is_reviewer=me.user.is_reviewer,
            organisations=[MembershipOut(name=n, role=r) for n, r in me.organisations],
            projects=[MembershipOut(name=n, role=r, organisation=o) for n, o, r in me.projects],
            token=TokenOut.of(me.token) if me.token else None,
        )


# --- the factory now (`fabriek partitions`) ------------------------------------------------------
class PartitionOut(BaseModel):
    name: str
    kind: Literal["local", "slurm"] = Field(description="local: the server's machine.")
    nodes: int
    nodes_idle: int = Field(description="Nodes with nothing running.")
    nodes_mixed: int = Field(description="Nodes with some CPUs free.")
    nodes_allocated: int = Field(description="Nodes with every CPU taken.")
    per_node: ResourcesOut
    gpu_type: str
    billing_weight: float = Field(description="GPU-hours charged per GPU-hour used here.")
    network: Network = Field(
        Network.HOST, description="What a job that asks for no network gets here."
    )
    network_limit: Network = Field(
        Network.HOST, description="The most network a job may ask for here."
    )
    cpus_busy: int
    memory_busy_bytes: int
    gpus_busy: int
    running_jobs: int = Field(description="Admitted and running jobs.")
    pending_jobs: int = Field(description="Waiting jobs that asked for this partition by name.")

    @classmethod
    def of(cls, p: PartitionNow) -> PartitionOut:
        r = p.capacity.resources
        return cls(
            name=p.name,
            kind=p.kind,  # type: ignore[arg-type]
            nodes=len(p.nodes),
            nodes_idle=p.count("idle"),
            nodes_mixed=p.count("mixed"),
            nodes_allocated=p.count("allocated"),
            per_node=ResourcesOut(cpus=r.cpus, memory_bytes=r.memory_bytes, gpus=r.gpus),
            gpu_type=p.capacity.gpu_type,
            billing_weight=p.capacity.billing_weight,
            network=p.capacity.network.default,
            network_limit=p.capacity.network.limit,
            cpus_busy=p.cpus_busy,
            memory_busy_bytes=p.memory_busy_bytes,
            gpus_busy=p.gpus_busy,
            running_jobs=p.running_jobs,
            pending_jobs=p.pending_jobs,
        )


class PoolQueueOut(BaseModel):
    pool: str
    running_jobs: int
    running_gpus: int
    pending_jobs: int
    pending_gpus: int = Field(description="GPUs the waiting jobs ask for, all nodes together.")


class FactoryOut(BaseModel):
    """Counts only: no job, user or project of anyone is named."""

    partitions: list[PartitionOut]
    pools: list[PoolQueueOut]

    @classmethod
    def of(cls, f: FactoryNow) -> FactoryOut:
        return cls(
            partitions=[PartitionOut.of(p) for p in f.partitions],
            pools=[
                PoolQueueOut(
                    pool=q.pool,
                    running_jobs=q.running_jobs,
                    running_gpus=q.running_gpus,
                    pending_jobs=q.pending_jobs,
                    pending_gpus=q.pending_gpus,
                )
                for q in f.pools
            ],
        )
