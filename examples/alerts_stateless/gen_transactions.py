"""Writes transactions.txt, the input of the alerts_stateless example.

Reproduces the generator source of Wallaroo's examples/python/alerts_stateless
(WallarooLabs/wallaroo, Apache-2.0): the first transaction is (id 0, amount 1); each next one
has the next id and an amount derived from the previous amount by a fixed multiply-add-modulo,
which spreads amounts over [-1250, 1250) so some fall beyond the +-1000 alert thresholds. The
seed (the first amount) is fixed, so the file is the same on every run.

    python gen_transactions.py
"""

from pathlib import Path

COUNT = 500
SEED_AMOUNT = 1
OUT = Path(__file__).with_name("transactions.txt")


def next_amount(amount):
    return (amount * 2305843009213693951 + 7) % 2500 - 1250


def transactions(count=COUNT):
    """The first `count` (id, amount) pairs of the generator."""
    out, amount = [], SEED_AMOUNT
    for tid in range(count):
        out.append((tid, amount))
        amount = next_amount(amount)
    return out


def lines(count=COUNT):
    return [f"{tid},{amount}" for tid, amount in transactions(count)]


if __name__ == "__main__":
    OUT.write_text("\n".join(lines()) + "\n")
    print(f"wrote {COUNT} transactions to {OUT}")
