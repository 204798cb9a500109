"""Retrying with back-off, with tenacity: the one policy for everything that waits for etcd or D-Bus.

``until_success`` retries an operation while it raises one of the given transient errors, forever, with
exponential back-off and full jitter (so that a thousand agents that lost etcd together do not come back in
lock step). A warning is logged on the first failure and every twentieth after it, the rest at debug level.
Anything else the operation raises goes straight through.
"""

from __future__ import annotations

import logging

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_random_exponential


def until_success(
    *errors: type[BaseException],
    log: logging.Logger,
    what: str,
    first: float = 0.2,
    cap: float = 5.0,
) -> AsyncRetrying:
    def before_sleep(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        level = logging.WARNING if state.attempt_number == 1 or state.attempt_number % 20 == 0 else logging.DEBUG
        log.log(level, "%s failed (attempt %d): %s; retrying", what, state.attempt_number, failure)

    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_random_exponential(multiplier=first, max=cap),
        stop=stop_never,
        reraise=True,
        before_sleep=before_sleep,
    )
