"""Writes transactions.txt, the input of the alerts_stateful example.

Reproduces the generator source of Wallaroo's examples/python/alerts_stateful
(WallarooLabs/wallaroo, Apache-2.0): five users take turns ("Fido" first, with amount 1); each
next amount comes from the previous transaction's amount by a fixed multiply-add-modulo, except
that a user whose generated running total is above 5000 gets a -6000 withdrawal and one below
-5000 a 6000 deposit, so totals swing across the +-2000 alert thresholds. The seed (Fido's first
amount) is fixed, so the file is the same on every run.

    python gen_transactions.py
"""

from pathlib import Path

COUNT = 200
USERS = ("Fido", "Rex", "Dr. Whiskers", "Feathers", "Mountaineer")
SEED_AMOUNT = 1
SWING_LIMIT = 5000
SWING = 6000
OUT = Path(__file__).with_name("transactions.txt")


def next_amount(amount):
    return (amount * 2305843009213693951 + 7) % 2500 - 1250


def swing(amount, total):
    """A user far in credit withdraws, one far in debt deposits; others keep `amount`."""
    if total > SWING_LIMIT:
        return -SWING
    if total < -SWING_LIMIT:
        return SWING
    return amount


def transactions(count=COUNT):
    """The first `count` (user, amount) pairs of the generator."""
    totals = [0] * len(USERS)
    out, amount = [], SEED_AMOUNT
    for n in range(count):
        i = n % len(USERS)
        if n > 0:
            amount = swing(next_amount(amount), totals[i])
        totals[i] += amount
        out.append((USERS[i], amount))
    return out


def lines(count=COUNT):
    return [f"{user},{amount}" for user, amount in transactions(count)]


if __name__ == "__main__":
    OUT.write_text("\n".join(lines()) + "\n")
    print(f"wrote {COUNT} transactions to {OUT}")
