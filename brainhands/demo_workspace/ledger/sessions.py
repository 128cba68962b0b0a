"""Login sessions that expire after a period of inactivity."""

from dataclasses import dataclass
from datetime import datetime, timedelta

IDLE_LIMIT = timedelta(minutes=30)


@dataclass
class Session:
    user: str
    last_seen: datetime

    def expired(self) -> bool:
        return datetime.utcnow() - self.last_seen > IDLE_LIMIT


def open_session(user: str) -> Session:
    return Session(user, last_seen=datetime.utcnow())
