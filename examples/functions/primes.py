"""Serverless functions: count the primes below two million on the cluster.

    wallaroo run examples/functions/primes.py

deploys this app to an embedded dev cluster and runs `main` here: it cuts [0, N) into ranges,
counts each range's primes on the runners with a segmented sieve (`count_primes.map`), checks
the total against the published value (fetched by `published_count`, which fails once on purpose
to show retries), and asks the `Sieve` class (one instance per runner, its table of small primes
built once by its @wallaroo.enter() method) which Mersenne numbers 2^p - 1 are prime.

Every function is also a plain Python function here: `count_primes(0, 100) == 25`."""

from __future__ import annotations

from math import isqrt

import wallaroo

N = 2_000_000
RANGE = 100_000
# pi(n), the number of primes below or at n, as published (OEIS A006880 and pi(2*10^6))
PUBLISHED = {10: 4, 100: 25, 1_000: 168, 10_000: 1_229, 100_000: 9_592, 1_000_000: 78_498,
             2_000_000: 148_933, 10_000_000: 664_579}
SMALL_LIMIT = 1_000_000  # the Sieve class answers is_prime(n) for n < SMALL_LIMIT ** 2

app = wallaroo.App("primes")


def primes_upto(limit: int) -> list[int]:
    """Every prime p <= limit (sieve of Eratosthenes)."""
    if limit < 2:
        return []
    sieve = bytearray([1]) * (limit + 1)
    sieve[0] = sieve[1] = 0
    for p in range(2, isqrt(limit) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, limit + 1, p)))
    return [n for n, flag in enumerate(sieve) if flag]


@app.function()
def count_primes(lo: int, hi: int) -> int:
    """How many primes p with lo <= p < hi: a segmented sieve, crossing out the multiples of
    the primes up to sqrt(hi) in a bytearray of hi - lo flags."""
    lo = max(lo, 2)
    if hi <= lo:
        return 0
    segment = bytearray([1]) * (hi - lo)
    for p in primes_upto(isqrt(hi - 1)):
        first = max(p * p, -(-lo // p) * p)  # its first multiple >= lo; below p*p, smaller primes did it
        segment[first - lo :: p] = bytes(len(range(first - lo, hi - lo, p)))
    return segment.count(1)


@app.function(retries=wallaroo.Retries(max_retries=3, initial_delay=0.2))
def published_count(n: int) -> tuple[int, int]:
    """(pi(n), the attempt that returned it), from a table of published values, as if fetched
    from a flaky service: on a runner the first attempt of each call fails with a
    ConnectionError, and the retry policy above runs it again 0.2 s later."""
    if n not in PUBLISHED:
        msg = f"no published value of pi({n}); known: {sorted(PUBLISHED)}"
        raise KeyError(msg)
    call = wallaroo.current_call()
    attempt = call.attempt if call is not None else 1
    if attempt == 1 and call is not None:
        msg = "the table service timed out (simulated, to show retries)"
        raise ConnectionError(msg)
    return PUBLISHED[n], attempt


@app.cls()
class Sieve:
    """Primality by trial division over a table of small primes, built once per runner."""

    @wallaroo.enter()
    def build(self) -> None:
        self.small = primes_upto(SMALL_LIMIT)
        self.small_set = frozenset(self.small)

    @wallaroo.method()
    def is_prime(self, n: int) -> bool:
        if n <= SMALL_LIMIT:
            return n in self.small_set
        if n >= SMALL_LIMIT**2:
            msg = f"is_prime({n}): this sieve answers for n < {SMALL_LIMIT ** 2:,}"
            raise ValueError(msg)
        root = isqrt(n)
        for p in self.small:
            if p > root:
                return True
            if n % p == 0:
                return False
        return True


@app.local_entrypoint()
def main() -> None:
    starts = range(0, N, RANGE)
    counts = list(count_primes.map(starts, [min(lo + RANGE, N) for lo in starts]))
    total = sum(counts)
    print(f"primes below {N:,}: {total} ({len(counts)} ranges of {RANGE:,} counted on the cluster)")
    lookup = published_count.spawn(N)  # runs meanwhile; .get() waits for it
    exponents = primes_upto(31)
    verdicts = list(Sieve().is_prime.map(2**p - 1 for p in exponents))
    mersenne = [p for p, prime in zip(exponents, verdicts, strict=True) if prime]
    print(f"Mersenne primes 2^p - 1 for p <= 31: p = {', '.join(map(str, mersenne))}")
    published, attempts = lookup.get(timeout=60)
    print(f"published value: {published} (fetched in {attempts} attempts)")
    if total != published:
        msg = f"MISMATCH: counted {total} primes below {N:,}, published value is {published}"
        raise SystemExit(msg)
    print("match: the count agrees with the published value")
