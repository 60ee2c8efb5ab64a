# A quick tour of jupyter-exec: run it with `jupyter-exec run examples/quickstart.py`.
# Each `# %%` cell runs in the same kernel, so later cells use what earlier ones defined.
# ruff: noqa: E402 - each cell imports what it uses, as notebook cells do

# %% Primes below 100, with a sieve
def primes_below(limit):
    """The primes below `limit`."""
    sieve = [True] * limit
    sieve[0:2] = [False, False]
    for number in range(2, int(limit**0.5) + 1):
        if sieve[number]:
            sieve[number * number :: number] = [False] * len(range(number * number, limit, number))
    return [number for number, is_prime in enumerate(sieve) if is_prime]


primes = primes_below(100)
print(f"{len(primes)} primes below 100: {primes}")

# %% A small statistic on the gaps between them (`primes` is still defined)
import itertools
import statistics

gaps = [b - a for a, b in itertools.pairwise(primes)]
print(f"mean gap {statistics.mean(gaps):.2f}, median {statistics.median(gaps)}, max {max(gaps)}")

# %% A plot: it is saved as a PNG file and its path printed
import matplotlib.pyplot as plt

plt.figure(figsize=(6, 3))
plt.bar(range(len(gaps)), gaps)
plt.title("Gaps between consecutive primes below 100")
plt.xlabel("index")
plt.ylabel("gap")
plt.show()
