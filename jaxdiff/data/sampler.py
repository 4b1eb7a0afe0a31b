"""Stateless, multi-host batch order: the batch of a step is a pure function of (seed, step).

Epoch e = step // steps_per_epoch visits the examples in the order
``np.random.default_rng([seed, e]).permutation(N)``; step s takes the next B entries of its
epoch's order.  Host p of P takes the contiguous slice [p B/P, (p+1) B/P) of that global batch.
So the data position of a run is just its step: a resumed run sees exactly the same batches,
and the global batch does not depend on the number of hosts.
"""
from __future__ import annotations

import functools
import operator

import numpy as np


@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """int64 (N,) read-only: the visiting order of ``epoch`` (memoised; a pure function)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    order.setflags(write=False)
    return order


def _check_int(name: str, value, low: int) -> int:
    """``value`` as a Python int (accepts numpy / JAX integer scalars); ValueError if < ``low``."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < low:
        raise ValueError(f"{name}: must be an int >= {low}, got {value!r}.")
    return number


class BatchSampler:
    """Indices of this host's share of the global batch of any step.

    Args:
      num_examples:      N, size of the source.
      global_batch_size: B, examples per step over all hosts; divisible by process_count.
      seed:              non-negative int; selects every epoch's permutation.
      process_index:     p, this host (``jax.process_index()``).
      process_count:     P, number of hosts (``jax.process_count()``).
      drop_remainder:    True: steps_per_epoch = N // B and the last N mod B examples of each
                         epoch's order are skipped (every batch distinct).  False:
                         steps_per_epoch = ceil(N / B) and the last batch of an epoch is topped
                         up with the first entries of the same epoch's order, so every example
                         is seen at least once per epoch and batches keep the shape (B,).
    """

    def __init__(self, num_examples: int, global_batch_size: int, seed: int, *,
                 process_index: int = 0, process_count: int = 1, drop_remainder: bool = True):
        self.num_examples = _check_int("num_examples", num_examples, 1)
        self.global_batch_size = _check_int("global_batch_size", global_batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        self.process_count = _check_int("process_count", process_count, 1)
        self.process_index = _check_int("process_index", process_index, 0)
        if self.process_index >= self.process_count:
            raise ValueError(f"process_index: must be < process_count={process_count}, got "
                             f"{process_index}.")
        if self.global_batch_size % self.process_count:
            raise ValueError(f"global_batch_size: {global_batch_size} is not divisible by "
                             f"process_count={process_count}.")
        if drop_remainder and self.global_batch_size > self.num_examples:
            raise ValueError(f"global_batch_size: {global_batch_size} exceeds num_examples="
                             f"{num_examples} with drop_remainder=True (no full batch).")
        self.drop_remainder = bool(drop_remainder)

    @property
    def local_batch_size(self) -> int:
        """B // P: examples this host reads per step."""
        return self.global_batch_size // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        n, b = self.num_examples, self.global_batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def global_indices_for_step(self, step: int) -> np.ndarray:
        """int64 (B,): the whole global batch of ``step`` (identical on every host)."""
        step = _check_int("step", step, 0)
        epoch, position = divmod(step, self.steps_per_epoch)
        order = _epoch_order(self.num_examples, self.seed, epoch)
        positions = np.arange(position * self.global_batch_size,
                              (position + 1) * self.global_batch_size) % self.num_examples
        return order[positions]

    def indices_for_step(self, step: int) -> np.ndarray:
        """int64 (B // P,): this host's contiguous slice of the global batch of ``step``."""
        b = self.local_batch_size
        start = self.process_index * b
        return self.global_indices_for_step(step)[start:start + b]

    def flips_for_step(self, step: int) -> np.ndarray:
        """bool (B // P,): horizontal-flip decisions for this host's slice of ``step``.

        Drawn for the whole global batch from ``default_rng([seed, step, 1])`` (a stream
        distinct from the epoch permutations) and sliced like the indices, so they too are
        independent of the number of hosts.
        """
        step = _check_int("step", step, 0)
        flips = np.random.default_rng([self.seed, step, 1]).random(self.global_batch_size) < 0.5
        b = self.local_batch_size
        return flips[self.process_index * b:(self.process_index + 1) * b]
