"""Repository functions: the only place that reads or writes the tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from app.store.tables import EventRow, ModelRow, StatusRow


class AlreadyExistsError(Exception):
    pass


def utc(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _normalise_status(session: Session, row: StatusRow) -> StatusRow:
    # Detach first: setting attributes on a row the session tracks would write it back.
    session.expunge(row)
    row.since = utc(row.since) or row.since
    row.last_failure_at = utc(row.last_failure_at)
    row.next_attempt_at = utc(row.next_attempt_at)
    row.running_since = utc(row.running_since)
    return row


def create_model(*, session: Session, fields: dict[str, Any], source: str, now: datetime) -> None:
    """Insert a model and its initial status in one transaction (the caller's)."""
    if session.get(ModelRow, fields["id"]) is not None:
        raise AlreadyExistsError(fields["id"])
    session.add(ModelRow(**fields, source=source, created_at=now, updated_at=now))
    session.add(StatusRow(model_id=fields["id"], since=now))
    try:
        session.flush()
    except IntegrityError as error:
        raise AlreadyExistsError(fields["id"]) from error


def update_model(*, session: Session, fields: dict[str, Any], source: str, now: datetime) -> bool:
    row = session.get(ModelRow, fields["id"])
    if row is None:
        return False
    for name, value in fields.items():
        setattr(row, name, value)
    row.source = source
    row.updated_at = now
    session.add(row)
    return True


def get_model(*, session: Session, model_id: str) -> ModelRow | None:
    return session.get(ModelRow, model_id)


def list_models(*, session: Session) -> list[ModelRow]:
    return list(session.exec(select(ModelRow).order_by(col(ModelRow.id))).all())


def delete_model(*, session: Session, model_id: str) -> bool:
    row = session.get(ModelRow, model_id)
    if row is None:
        return False
    session.execute(sql_delete(StatusRow).where(col(StatusRow.model_id) == model_id))
    session.delete(row)
    return True


def get_status(*, session: Session, model_id: str) -> StatusRow | None:
    row = session.get(StatusRow, model_id)
    return None if row is None else _normalise_status(session, row)


def list_statuses(*, session: Session) -> list[StatusRow]:
    rows = session.exec(select(StatusRow).order_by(col(StatusRow.model_id))).all()
    return [_normalise_status(session, row) for row in rows]


def save_status(*, session: Session, status: StatusRow) -> None:
    session.merge(status)


def append_event(
    *,
    session: Session,
    model_id: str | None,
    kind: str,
    at: datetime,
    reason: str = "",
    from_state: str | None = None,
    to_state: str | None = None,
    data: dict[str, Any] | None = None,
) -> EventRow:
    """Add an event to the caller's transaction; its id is set once the session flushes."""
    row = EventRow(
        model_id=model_id,
        at=at,
        kind=kind,
        reason=reason,
        from_state=from_state,
        to_state=to_state,
        data=data or {},
    )
    session.add(row)
    session.flush()
    return row


def list_events(*, session: Session, model_id: str, limit: int) -> list[EventRow]:
    """The newest `limit` events of a model, oldest first."""
    query = (
        select(EventRow)
        .where(col(EventRow.model_id) == model_id)
        .order_by(col(EventRow.id).desc())
        .limit(limit)
    )
    rows = list(session.exec(query).all())
    rows.reverse()
    for row in rows:
        session.expunge(row)
        row.at = utc(row.at) or row.at
    return rows


def last_event_id(*, session: Session) -> int:
    """The highest event id (0 with none)."""
    return int(session.exec(select(func.max(col(EventRow.id)))).one() or 0)


def list_events_after(
    *, session: Session, after_id: int, model_id: str | None, limit: int
) -> list[EventRow]:
    """Events with an id above `after_id` (of one model, or all), oldest first."""
    query = select(EventRow).where(col(EventRow.id) > after_id)
    if model_id is not None:
        query = query.where(col(EventRow.model_id) == model_id)
    rows = list(session.exec(query.order_by(col(EventRow.id)).limit(limit)).all())
    for row in rows:
        session.expunge(row)
        row.at = utc(row.at) or row.at
    return rows
