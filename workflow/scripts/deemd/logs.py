"""The one way a workflow script logs: into its rule's log file, uncaught errors included.

Snakemake shows a failed job's stderr on the terminal only; the rule's log is what
``--show-failed-logs`` prints and, on SLURM, the only record a user finds. So an exception
that ends a script must reach the log too, not only the traceback on stderr.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"

# The hook that was in place before the first start_rule_log: ours chains to it, so the
# traceback still goes to stderr and Python still exits with status 1.
_previous_hook = None


def log_uncaught(kind, value, traceback) -> None:
    """sys.excepthook: the exception's type, message and traceback as an ERROR record of
    the root logger (the rule's log), then the previous hook (stderr)."""
    if not issubclass(kind, KeyboardInterrupt):
        logging.getLogger("deemd").error("failed: %s: %s", kind.__name__, value, exc_info=(kind, value, traceback))
        for handler in logging.getLogger().handlers:
            handler.flush()
    (_previous_hook or sys.__excepthook__)(kind, value, traceback)


def start_rule_log(path: str | Path | None, level: int = logging.INFO) -> logging.Logger:
    """Send every log record of this process (``level`` and above) to ``path``, the rule's
    log file (stderr where None), replacing earlier handlers, so that a test may call a
    script's main() repeatedly; and log an exception that ends the script there too
    (log_uncaught), before it reaches stderr and the job fails with a non-zero status.

    Returns the "deemd" logger, for scripts that log through a logger object.
    """
    global _previous_hook
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(filename=str(path), level=level, format=FORMAT, force=True, encoding="utf-8")
    else:
        logging.basicConfig(stream=sys.stderr, level=level, format=FORMAT, force=True)
    if sys.excepthook is not log_uncaught:
        _previous_hook = sys.excepthook
        sys.excepthook = log_uncaught
    return logging.getLogger("deemd")
