"""Stand-ins for a dataset preparation, run in the child process that
``augreg_nb.vtab_run.run_stoppable`` spawns. A module of their own that imports nothing
heavy, so the child starts in a moment."""

from __future__ import annotations

import time


def slow_child(seconds: float, conn) -> None:
    """A long preparation: done after ``seconds``."""
    time.sleep(seconds)
    conn.send(None)


def failing_child(conn) -> None:
    """A preparation that fails, as TFDS does without network."""
    conn.send("ConnectionError: the host name example.org cannot be resolved")
