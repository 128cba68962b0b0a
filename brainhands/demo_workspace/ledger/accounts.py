"""Accounts and the entries posted to them."""

from dataclasses import dataclass, field
from datetime import datetime

from ledger.money import Money


@dataclass
class Entry:
    amount: Money
    memo: str
    posted_at: datetime = field(default_factory=datetime.utcnow)


@dataclass
class Account:
    name: str
    entries: list[Entry] = field(default_factory=list)
    opened_at: datetime = field(default_factory=lambda: datetime.utcnow())

    def post(self, amount: Money, memo: str) -> Entry:
        entry = Entry(amount, memo)
        self.entries.append(entry)
        return entry

    def balance(self) -> Money:
        total = Money(0)
        for entry in self.entries:
            total = total + entry.amount
        return total
