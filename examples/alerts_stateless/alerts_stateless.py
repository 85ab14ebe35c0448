"""Alerts (stateless), ported from Wallaroo 0.6's examples/python/alerts_stateless
(WallarooLabs/wallaroo, Apache-2.0).

Each record is one transaction, "id,amount". A stateless step raises a deposit alert for an
amount above 1000 and a withdrawal alert for one below -1000; other transactions produce
nothing. Alerts are written as "Deposit Alert for ID: AMOUNT" (or "Withdrawal Alert ...").
The original generated its transactions with a generator source; here gen_transactions.py
writes the same stream to transactions.txt.
"""

import wallaroo

DEPOSIT_THRESHOLD = 1000
WITHDRAWAL_THRESHOLD = -1000


def application_setup(args):
    transactions = wallaroo.source(
        "transactions", wallaroo.StreamSource(decoder=decode_transaction)
    )
    pipeline = transactions.to(check_transaction).to_sink(
        wallaroo.StreamSink("alerts", encoder=encode_alert)
    )
    return wallaroo.build_application("alerts_stateless", pipeline)


class Transaction:
    def __init__(self, tid, amount):
        self.id = tid
        self.amount = amount


class DepositAlert:
    def __init__(self, tid, amount):
        self.id = tid
        self.amount = amount

    def __str__(self):
        return f"Deposit Alert for {self.id}: {self.amount}"


class WithdrawalAlert:
    def __init__(self, tid, amount):
        self.id = tid
        self.amount = amount

    def __str__(self):
        return f"Withdrawal Alert for {self.id}: {self.amount}"


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_transaction(bs):
    tid, amount = bs.decode("utf-8").split(",")
    return Transaction(int(tid), int(amount))


@wallaroo.computation(name="check transaction")
def check_transaction(transaction):
    if transaction.amount > DEPOSIT_THRESHOLD:
        return DepositAlert(transaction.id, transaction.amount)
    if transaction.amount < WITHDRAWAL_THRESHOLD:
        return WithdrawalAlert(transaction.id, transaction.amount)
    return None


@wallaroo.encoder
def encode_alert(alert):
    return (str(alert) + "\n").encode()
