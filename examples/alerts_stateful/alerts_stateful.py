"""Alerts (stateful), ported from Wallaroo 0.6's examples/python/alerts_stateful
(WallarooLabs/wallaroo, Apache-2.0).

Each record is one transaction, "user,amount". Transactions are keyed by user; a state
computation keeps each user's running total and, after adding the amount, raises a deposit
alert while the total is above 2000 and a withdrawal alert while it is below -2000, written as
"Deposit Alert for USER: TOTAL" (or "Withdrawal Alert ..."). The original generated its
transactions with a generator source; here gen_transactions.py writes the same stream to
transactions.txt.
"""

import wallaroo

DEPOSIT_THRESHOLD = 2000
WITHDRAWAL_THRESHOLD = -2000


def application_setup(args):
    transactions = wallaroo.source(
        "transactions", wallaroo.StreamSource(decoder=decode_transaction)
    )
    pipeline = (
        transactions.key_by(extract_user)
        .to(check_transaction_total)
        .to_sink(wallaroo.StreamSink("alerts", encoder=encode_alert))
    )
    return wallaroo.build_application("alerts_stateful", pipeline)


class Transaction:
    def __init__(self, user, amount):
        self.user = user
        self.amount = amount


class TransactionTotal:
    def __init__(self):
        self.total = 0


class DepositAlert:
    def __init__(self, user, amount):
        self.user = user
        self.amount = amount

    def __str__(self):
        return f"Deposit Alert for {self.user}: {self.amount}"


class WithdrawalAlert:
    def __init__(self, user, amount):
        self.user = user
        self.amount = amount

    def __str__(self):
        return f"Withdrawal Alert for {self.user}: {self.amount}"


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_transaction(bs):
    user, amount = bs.decode("utf-8").rsplit(",", 1)
    return Transaction(user, int(amount))


@wallaroo.key_extractor
def extract_user(transaction):
    return transaction.user


@wallaroo.state_computation(name="check transaction total", state=TransactionTotal)
def check_transaction_total(transaction, state):
    state.total = state.total + transaction.amount
    if state.total > DEPOSIT_THRESHOLD:
        return DepositAlert(transaction.user, state.total)
    if state.total < WITHDRAWAL_THRESHOLD:
        return WithdrawalAlert(transaction.user, state.total)
    return None


@wallaroo.encoder
def encode_alert(alert):
    return (str(alert) + "\n").encode()
