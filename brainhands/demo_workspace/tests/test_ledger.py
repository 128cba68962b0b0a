from ledger.accounts import Account
from ledger.money import Money


def test_balance_sums_entries():
    account = Account("cash")
    account.post(Money(1250), "coffee beans")
    account.post(Money(-250), "refund")
    assert str(account.balance()) == "10.00 EUR"
