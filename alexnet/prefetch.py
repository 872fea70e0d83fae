"""Start an epoch's input while the previous epoch is still being validated.

Each epoch's Ray Data execution starts when its iterator is first pulled, and its first batch
waits for that start (tasks scheduled, workers leased, the local shuffle buffer filled): ~0.5 s a
epoch on a 2-core machine, all of it counted as data wait. `Primed` pulls the first batch in a
background thread as soon as it is made, so the train loop makes the next epoch's iterator before
validating and finds that batch ready.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Iterator


class Primed:
    """An iterable that starts fetching `make()`'s first item now, in a thread. Iterate it once,
    from one thread; the wait for the fetch (if it is not done yet) happens in the first `next`.
    An error from the fetch is raised there too."""

    def __init__(self, make: Callable[[], Iterable], name: str = "prefetch"):
        self._make = make
        self._iterator: Iterator | None = None
        self._first: list = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch, name=name, daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._iterator = iter(self._make())
            self._first.append(next(self._iterator))
        except StopIteration:
            pass
        except BaseException as err:  # re-raised in the consumer's thread
            self._error = err

    def __iter__(self) -> Iterator:
        self._thread.join()
        if self._error is not None:
            raise self._error
        yield from self._first
        self._first.clear()
        if self._iterator is not None:
            yield from self._iterator
