"""A small per-process LRU cache for open media containers (PDF documents, datasets).

Opening a container is what costs; reading one page or one row of it is cheap. Samples carry
references, so the same container is asked for again and again, in the main process and in
DataLoader workers. Keys include the process id: a forked worker must open its own handles
rather than share its parent's (file offsets and library state are per process).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable


class ProcessCache:
    """``get(key, open_fn)``: the cached value for ``key`` in this process, else ``open_fn()``'s,
    kept among the ``size`` most recently used; ``close`` is called on evicted values. Calls
    share one re-entrant lock, which also serialises callers that need it (PDFium is not
    thread-safe: ``with cache.lock:`` around its calls)."""

    def __init__(self, size: int, close: Callable | None = None):
        self.size, self.close = size, close
        self.lock = threading.RLock()
        self._items: OrderedDict = OrderedDict()

    def get(self, key, open_fn: Callable):
        key = (os.getpid(), key)
        with self.lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = open_fn()
            self._items[key] = value
            while len(self._items) > self.size:
                evicted = self._items.popitem(last=False)[1]
                if self.close is not None:
                    self.close(evicted)
            return value
