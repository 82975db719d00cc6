"""Progress reports of a download, and the byte and duration formats of the log lines."""

from __future__ import annotations

from dataclasses import dataclass


def format_bytes(n: float) -> str:
    """Human-readable size in decimal units: ``format_bytes(1.5e9) == '1.50 GB'``."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` for an ETA."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass(frozen=True)
class Progress:
    """One progress report of :func:`download`; ``str()`` gives a log line.

    ``done`` counts bytes in the partial file (the resumed prefix included),
    ``rate`` is bytes/s transferred by this call (prefix excluded).
    """

    name: str
    done: int
    total: int | None
    rate: float
    elapsed: float

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None

    def __str__(self) -> str:
        text = f"{self.name}: {format_bytes(self.done)}"
        if self.total:
            text += f" / {format_bytes(self.total)} ({100 * self.done / self.total:.1f} %)"
        text += f", {self.rate / 1e6:.2f} MB/s"
        if self.total and self.rate > 0 and self.done < self.total:
            text += f", ETA {format_duration((self.total - self.done) / self.rate)}"
        return text
