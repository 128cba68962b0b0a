"""An append-only audit trail of who changed what."""

from datetime import datetime

_TRAIL: list[tuple[datetime, str, str]] = []


def record(actor: str, action: str) -> None:
    _TRAIL.append((datetime.utcnow(), actor, action))


def since(moment: datetime) -> list[tuple[datetime, str, str]]:
    return [item for item in _TRAIL if item[0] >= moment]
