"""Export accounts as CSV with a timestamped header."""

import csv
import io
from datetime import datetime

from ledger.accounts import Account


def to_csv(account: Account) -> str:
    out = io.StringIO()
    out.write(f"# {account.name}, exported {datetime.utcnow().isoformat()}\n")
    writer = csv.writer(out)
    writer.writerow(["posted_at", "memo", "amount"])
    for entry in account.entries:
        writer.writerow([entry.posted_at.isoformat(), entry.memo, str(entry.amount)])
    return out.getvalue()


def export_name(account: Account) -> str:
    stamp = datetime.utcnow().strftime("%Y%m%dT%H%M%S")
    return f"{account.name}-{stamp}.csv"
