"""ledger: accounts, an audit trail, exports and scheduled statements."""
