"""What fits in a device's memory: searches over the per-device batch with
few evaluations of a memory function (each one compiles a train step).

`peak(b)` is the device memory of a step on a micro-batch of b examples; it
grows with b, nearly linearly (activations), from a fixed part (parameters,
optimiser state, gradients).
"""
from typing import Callable, Dict, Optional, Tuple


def largest_fitting(peak: Callable[[int], int], budget: int,
                    known: Optional[Dict[int, int]] = None,
                    max_evaluations: int = 10) -> Tuple[int, bool]:
  """(largest b >= 1 with peak(b) <= budget, or 0; whether b + 1 was seen not
  to fit), by the secant method on integers. `known` holds evaluations
  {b: peak(b)} (e.g. from a search for another budget) and receives the new
  ones. The first guess is where the line through the smallest and largest
  known b reaches `budget`, later ones use the last two evaluations; each is
  kept strictly between the largest b known to fit and the smallest known
  not to (halving that interval when guesses stall at its edge). A linear
  `peak` takes 4 evaluations: 1, 2, the answer and the answer + 1."""
  known = {} if known is None else known
  if 1 not in known:
    known[1] = peak(1)
  if known[1] > budget:
    return 0, True
  fits = max(b for b, p in known.items() if p <= budget)
  too_big = min((b for b, p in known.items() if p > budget), default=None)
  order = [min(known), max(known)] if len(known) > 1 else [1]
  evaluations = 0
  while ((too_big is None or too_big - fits > 1)
         and evaluations < max_evaluations):
    if len(order) == 1:
      guess = 2
    else:
      a, b = order[-2], order[-1]
      slope = (known[b] - known[a]) / (b - a)
      guess = (b + int((budget - known[b]) // slope) if slope > 0
               else 2 * fits)
    guess = max(guess, fits + 1)
    if too_big is not None:
      guess = min(guess, too_big - 1)
      creeping = (len(order) > 1 and order[-1] == order[-2] + 1 == fits
                  and guess == fits + 1)
      if creeping and too_big - fits > 2:
        guess = (fits + too_big) // 2
    known[guess] = peak(guess)
    evaluations += 1
    order.append(guess)
    if known[guess] <= budget:
      fits = guess
    else:
      too_big = guess
  return fits, too_big == fits + 1


def divisors(n: int):
  """The divisors of n, ascending."""
  return [k for k in range(1, n + 1) if n % k == 0]


def accumulation(share: int, largest: int,
                 peak_with: Callable[[int], int], budget: int
                 ) -> Optional[int]:
  """The fewest micro-batches K (a divisor of the per-device `share`) whose
  micro-batch share / K is at most `largest` and whose step, peak_with(K),
  fits in `budget` (the whole share's input and the gradient sum add to a
  micro-batch's memory); None if none does."""
  for k in divisors(share):
    if share // k <= largest and peak_with(k) <= budget:
      return k
  return None
