"""Progress for a run whose output is not a terminal (CI, nohup, a log file): one plain line at
least every PERIOD_S seconds and whenever a partition ends, with samples done, rate and ETA.
On a terminal the CLI shows a bar instead. Pure: time is a parameter."""

from __future__ import annotations

from collections.abc import Sequence

PERIOD_S = 30.0


def _eta(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressLines:
    """Feed it the ledger's progress rows; it says when to print, and what."""

    def __init__(self, started_at: float, period_s: float = PERIOD_S) -> None:
        self.started_at = started_at
        self.period_s = period_s
        self.last_at = started_at
        self.parts_ended: int | None = None
        self.first_done: int | None = None  # samples already done when this driver started (resume)

    def update(self, rows: Sequence[dict], now: float) -> str | None:
        total = sum(r["samples_total"] for r in rows)
        done = sum(r["samples_done"] for r in rows)
        ended = sum(r["partitions"]["done"] + r["partitions"]["failed"] for r in rows)
        if self.first_done is None:
            self.first_done = done
        partition_end = self.parts_ended is not None and ended > self.parts_ended
        self.parts_ended = ended
        if not partition_end and now - self.last_at < self.period_s:
            return None
        self.last_at = now
        return self.line(done, total, ended, sum(sum(r["partitions"].values()) for r in rows), now)

    def line(self, done: int, total: int, ended: int, parts: int, now: float) -> str:
        elapsed = max(1e-6, now - self.started_at)
        rate = (done - (self.first_done or 0)) / elapsed
        pct = 100.0 * done / total if total else 100.0
        eta = _eta((total - done) / rate) if rate > 0 and done < total else ("done" if done >= total else "-")
        return (f"progress: {done}/{total} samples ({pct:.0f}%), {ended}/{parts} partitions ended, "
                f"{rate:.1f} samples/s, ETA {eta}")


__all__ = ["ProgressLines", "PERIOD_S"]
