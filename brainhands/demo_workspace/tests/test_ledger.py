"""The ledger's tests: plain unittest, so `python -m unittest` runs them with nothing installed.

The time tests say what the change to aware datetimes is for: every stamp the ledger makes is timezone-aware UTC, so it
compares with other aware datetimes (an audit query from another service, a session from the API) instead of
raising TypeError.
"""

import unittest
from datetime import datetime, timedelta, timezone

from ledger import audit
from ledger.accounts import Account
from ledger.export import to_csv
from ledger.money import Money
from ledger.scheduler import next_statement
from ledger.sessions import open_session


class LedgerTest(unittest.TestCase):
    def test_balance_sums_entries(self):
        account = Account("cash")
        account.post(Money(1250), "coffee beans")
        account.post(Money(-250), "refund")
        self.assertEqual(str(account.balance()), "10.00 EUR")

    def test_entries_and_accounts_are_stamped_in_utc(self):
        account = Account("cash")
        entry = account.post(Money(100), "stamp")
        self.assertEqual(entry.posted_at.tzinfo, timezone.utc)
        self.assertEqual(account.opened_at.tzinfo, timezone.utc)

    def test_audit_trail_answers_an_aware_query(self):
        audit.record("ana", "closed the month")
        since = audit.since(datetime.now(timezone.utc) - timedelta(minutes=1))
        self.assertEqual([item[1:] for item in since][-1], ("ana", "closed the month"))

    def test_a_fresh_session_has_not_expired(self):
        session = open_session("ana")
        self.assertFalse(session.expired())
        self.assertEqual(session.last_seen.tzinfo, timezone.utc)

    def test_export_header_names_utc(self):
        self.assertIn("+00:00", to_csv(Account("cash")).splitlines()[0])

    def test_next_statement_is_the_first_of_next_month_in_utc(self):
        due = next_statement(datetime(2026, 1, 31, 12, tzinfo=timezone.utc))
        self.assertEqual(due, datetime(2026, 2, 1, 6, tzinfo=timezone.utc))
        self.assertEqual(next_statement().tzinfo, timezone.utc)


if __name__ == "__main__":
    unittest.main()
