"""Classify pymongo errors: transient (retry / reconnect), lost position, permanent.

Codes as MongoDB 6.0-8.0 answer them (src/mongo/base/error_codes.yml):
286 ChangeStreamHistoryLost and 280 ChangeStreamFatalError ("the resume token was
not found"), both labelled NonResumableChangeStreamError; 136 CappedPositionLost
(an open stream overtaken by the oplog); 260 InvalidResumeToken (older servers);
9 FailedToParse and 40647-40649 / 50811 for a token that does not parse;
10334 BSONObjectTooLarge (an event over 16 MiB); 40573 ($changeStream on a standalone).
"""

from __future__ import annotations

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

__all__ = [
    "BSON_OBJECT_TOO_LARGE",
    "CHANGE_STREAM_FATAL",
    "CHANGE_STREAM_HISTORY_LOST",
    "INVALID_RESUME_TOKEN",
    "NOT_A_REPLICA_SET",
    "error_name",
    "is_position_lost",
    "is_too_large",
    "is_transient",
]

CHANGE_STREAM_HISTORY_LOST = 286
CHANGE_STREAM_FATAL = 280
CAPPED_POSITION_LOST = 136
INVALID_RESUME_TOKEN = 260
BSON_OBJECT_TOO_LARGE = 10334
NOT_A_REPLICA_SET = 40573
_POSITION_LOST = frozenset({CHANGE_STREAM_HISTORY_LOST, CHANGE_STREAM_FATAL, CAPPED_POSITION_LOST,
                            INVALID_RESUME_TOKEN})

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
    """True for 286, 280, 136 and 260: the saved or open position cannot be resumed."""
    return isinstance(exc, OperationFailure) and exc.code in _POSITION_LOST


def is_too_large(exc: BaseException) -> bool:
    """True for 10334 BSONObjectTooLarge."""
    return isinstance(exc, OperationFailure) and exc.code == BSON_OBJECT_TOO_LARGE


def error_name(exc: BaseException) -> str:
    """'error 286 ChangeStreamHistoryLost' (code and name of a server error, for messages)."""
    details = getattr(exc, "details", None) or {}
    name = details.get("codeName", "") if hasattr(details, "get") else ""
    return f"error {getattr(exc, 'code', '?')} {name}".strip()
