"""The registry: specs, statuses and events, as the domain sees them. All SQL goes through here
to app/store; locked-database errors are retried so a busy SQLite never surfaces as a 500."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from app.orchestrator.clock import Clock
from app.orchestrator.spec import ModelSpec, spec_fields
from app.store import repository
from app.store.db import session_scope
from app.store.repository import AlreadyExistsError
from app.store.tables import EventRow, ModelRow, StatusRow

T = TypeVar("T")
_LOCK_RETRIES = 5

__all__ = ["AlreadyExistsError", "Registry"]


def spec_from_row(row: ModelRow) -> ModelSpec:
    data = row.model_dump(exclude={"source", "created_at", "updated_at"})
    return ModelSpec.model_validate(data)


class Registry:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def _run(self, work: Callable[[Session], T]) -> T:
        for attempt in range(_LOCK_RETRIES):
            try:
                with session_scope(self.engine) as session:
                    return work(session)
            except OperationalError as error:
                if "locked" not in str(error) or attempt == _LOCK_RETRIES - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def create(self, spec: ModelSpec, *, source: str = "api") -> None:
        now = self.clock.now()

        def work(session: Session) -> None:
            repository.create_model(
                session=session, fields=spec_fields(spec), source=source, now=now
            )
            repository.append_event(
                session=session, model_id=spec.id, kind="created", at=now, reason=source
            )

        self._run(work)

    def update(self, spec: ModelSpec, *, source: str = "api") -> bool:
        now = self.clock.now()
        return self._run(
            lambda session: repository.update_model(
                session=session, fields=spec_fields(spec), source=source, now=now
            )
        )

    def delete(self, model_id: str) -> bool:
        now = self.clock.now()

        def work(session: Session) -> bool:
            deleted = repository.delete_model(session=session, model_id=model_id)
            if deleted:
                repository.append_event(session=session, model_id=model_id, kind="deleted", at=now)
            return deleted

        return self._run(work)

    def spec(self, model_id: str) -> ModelSpec | None:
        row = self._run(lambda session: repository.get_model(session=session, model_id=model_id))
        return None if row is None else spec_from_row(row)

    def specs(self) -> list[ModelSpec]:
        rows = self._run(lambda session: repository.list_models(session=session))
        return [spec_from_row(row) for row in rows]

    def status(self, model_id: str) -> StatusRow | None:
        return self._run(lambda session: repository.get_status(session=session, model_id=model_id))

    def statuses(self) -> dict[str, StatusRow]:
        rows = self._run(lambda session: repository.list_statuses(session=session))
        return {row.model_id: row for row in rows}

    def save_status(self, status: StatusRow, *, event: dict[str, Any] | None = None) -> None:
        """Persist a status and, in the same transaction, the event that explains it."""

        def work(session: Session) -> None:
            repository.save_status(session=session, status=status)
            if event is not None:
                repository.append_event(
                    session=session, model_id=status.model_id, at=self.clock.now(), **event
                )

        self._run(work)

    def append_event(self, model_id: str | None, kind: str, **fields: Any) -> None:
        now = self.clock.now()
        self._run(
            lambda session: repository.append_event(
                session=session, model_id=model_id, kind=kind, at=now, **fields
            )
        )

    def events(self, model_id: str, *, limit: int) -> list[EventRow]:
        return self._run(
            lambda session: repository.list_events(session=session, model_id=model_id, limit=limit)
        )
