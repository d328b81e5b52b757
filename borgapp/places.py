"""Bounded places in one process: the requests that may wait for their job, the agents that
may wait for theirs, the downloads that may stream at once. Each holds a thread, so each is
bounded by a setting, read at every take (so a changed setting counts at once)."""

import threading

from django.conf import settings


class Places:
    def __init__(self, setting: str):
        self.setting = setting
        self.lock = threading.Lock()
        self.count = 0

    @property
    def limit(self) -> int:
        return getattr(settings, self.setting)

    def take(self) -> bool:
        """A place, or False when all `limit` are taken."""
        with self.lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def give_back(self) -> None:
        with self.lock:
            self.count -= 1
