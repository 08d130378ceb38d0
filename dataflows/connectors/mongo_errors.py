"""Classify pymongo errors: transient (retry / reconnect), lost position, permanent."""

from __future__ import annotations

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

__all__ = ["CHANGE_STREAM_HISTORY_LOST", "INVALID_RESUME_TOKEN", "is_position_lost", "is_transient"]

CHANGE_STREAM_HISTORY_LOST = 286
INVALID_RESUME_TOKEN = 260

# Server codes that mean "try again": network, elections, shutdowns, timeouts, conflicts.
_TRANSIENT_CODES = frozenset({
    6, 7, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 50, 64, 133, 134,
})
_TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError", "ResumableChangeStreamError")


def is_transient(exc: BaseException) -> bool:
    """True if retrying the same operation later may succeed."""
    if isinstance(exc, ConnectionFailure):
        return True
    if isinstance(exc, PyMongoError) and any(exc.has_error_label(lbl) for lbl in _TRANSIENT_LABELS):
        return True
    return isinstance(exc, OperationFailure) and exc.code in _TRANSIENT_CODES


def is_position_lost(exc: BaseException) -> bool:
    """True for 286 ChangeStreamHistoryLost and 260 InvalidResumeToken."""
    return isinstance(exc, OperationFailure) and exc.code in (
        CHANGE_STREAM_HISTORY_LOST,
        INVALID_RESUME_TOKEN,
    )
