"""Streaming inference: an event log, a consumer that scores it as the model server does,
and side effects made exactly once through idempotency keys (docs/streaming.md).

``EventLog`` is the log contract (``lab_event_log`` chooses a backend; the embedded one is
``SqliteEventLog`` in ``data/stream.db``); ``StreamConsumer`` reads, scores, delivers to
the sinks and commits; ``StreamStore`` holds its predictions, dead letters and model
changes.
"""

from lab.streaming.consumer import MODEL_CHANGED, ConsumerOptions, StreamConsumer, open_event_log
from lab.streaming.log import EventLog, LogEvent, SqliteEventLog, encode_payload
from lab.streaming.metrics import StreamMetrics
from lab.streaming.store import ModelChange, StreamStore, idempotency_key

__all__ = [
    "MODEL_CHANGED", "ConsumerOptions", "EventLog", "LogEvent", "ModelChange", "SqliteEventLog", "StreamConsumer",
    "StreamMetrics", "StreamStore", "encode_payload", "idempotency_key", "open_event_log",
]
