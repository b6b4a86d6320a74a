"""One target's budget window, in process: the ``LocalStore`` mirror of the budget part of
``lua/select_target.lua`` and ``lua/record_usage.lua``.

The window holds the reservations of the last ``WINDOW_MS`` (time, tokens), oldest first;
a target is over budget when one more request, or this request's tokens, would exceed its
``requests_per_minute`` / ``tokens_per_minute``.
"""

from __future__ import annotations

__all__ = ["WINDOW_MS", "BudgetWindow"]

#: Budgets are per minute: a reservation counts for 60 s from the time it was made.
WINDOW_MS = 60_000


class BudgetWindow:
    """Reservations of one target: lease id -> (time in ms, tokens), in time order."""

    __slots__ = ("entries", "tokens")

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, int]] = {}
        self.tokens = 0

    def sweep(self, now_ms: int) -> tuple[int, int]:
        """Drop what left the window; return (requests, tokens) in it."""
        cutoff = now_ms - WINDOW_MS
        for lease, (at_ms, tokens) in list(self.entries.items()):
            if at_ms > cutoff:
                break
            del self.entries[lease]
            self.tokens -= tokens
        if not self.entries:
            self.tokens = 0
        return len(self.entries), self.tokens

    @staticmethod
    def over(requests: int, used: int, tokens: int, tpm: int, rpm: int) -> bool:
        """Whether a request of ``tokens`` would overrun the limits (0: none); a request
        larger than the whole budget may still run in a window holding no tokens."""
        return (rpm > 0 and requests + 1 > rpm) or (tpm > 0 and used > 0 and used + tokens > tpm)

    def retry_at(self, tokens: int, tpm: int, rpm: int, now_ms: int) -> tuple[int, str]:
        """When the window can take a request of ``tokens``, and the limit holding it back."""
        requests, used = len(self.entries), self.tokens
        times = [at_ms for at_ms, _ in self.entries.values()]
        at_ms, reason = now_ms, "tokens"
        if rpm > 0 and requests + 1 > rpm:
            at_ms, reason = times[requests - rpm] + WINDOW_MS, "requests"
        if tpm > 0 and used + tokens > tpm:
            freed = 0
            for entry_at_ms, entry_tokens in self.entries.values():
                freed += entry_tokens
                if used - freed + tokens <= tpm or freed >= used:
                    if entry_at_ms + WINDOW_MS >= at_ms:
                        at_ms, reason = entry_at_ms + WINDOW_MS, "tokens"
                    break
        return at_ms, reason

    def reserve(self, lease: str, tokens: int, now_ms: int) -> None:
        self.entries[lease] = (now_ms, tokens)
        self.tokens += tokens

    def settle(self, lease: str, reserved: int, used: int) -> None:
        """Swap a reservation still in the window for the tokens really used."""
        entry = self.entries.get(lease)
        if entry is not None and entry[1] == reserved:
            self.entries[lease] = (entry[0], used)
            self.tokens += used - reserved
