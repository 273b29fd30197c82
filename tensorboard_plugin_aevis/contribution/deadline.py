"""The time limit of a contribution analysis: a ``time.monotonic()`` deadline checked between steps."""

from __future__ import annotations

import time
from typing import Optional


class ContributionTimeout(TimeoutError):
    """The computation passed its ``deadline`` (a ``time.monotonic()`` value)."""


def check_deadline(deadline: Optional[float]) -> None:
    """Raises :class:`ContributionTimeout` when ``deadline`` (None: no limit) has passed."""
    if deadline is not None and time.monotonic() > deadline:
        raise ContributionTimeout("the contribution analysis ran past its time limit; use mode='quadratic', fewer steps or fewer examples")
