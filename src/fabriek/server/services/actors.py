"""Who is acting: the authenticated user, or the system itself (the controller)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: int | None
    name: str
    is_operator: bool = False  # runs the factory: may see and change everything
    is_reviewer: bool = False  # judges applications to access calls

    @property
    def label(self) -> str:
        return self.name if self.user_id is None else f"user:{self.name}"


SYSTEM = Actor(user_id=None, name="controller", is_operator=True)
