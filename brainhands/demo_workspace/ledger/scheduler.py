"""Decide when the next monthly statement is due."""

from datetime import datetime, timedelta


def next_statement(last: datetime | None = None) -> datetime:
    base = last or datetime.utcnow()
    return (base.replace(day=1) + timedelta(days=32)).replace(day=1, hour=6, minute=0, second=0, microsecond=0)
