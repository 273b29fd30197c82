"""Where AEVis summaries go: the user's SummaryWriter, or an event file opened on a logdir.

``writer`` in every op is either a ``torch.utils.tensorboard.SummaryWriter`` (events go
through ``writer._get_file_writer().add_summary``, so they land in the user's own event
file) or a logdir path (``str`` / ``os.PathLike``: TensorBoard's own ``EventFileWriter``
opens a new event file there for the duration of one op and closes it after).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
import weakref
from typing import Set

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


@dataclasses.dataclass
class WriterState:
    """What one writer has logged so far: its id, a manifest counter, per-name parts logged once."""

    writer_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    manifests_logged: int = 0
    graphs_logged: Set[str] = dataclasses.field(default_factory=set)
    reference_images_logged: Set[str] = dataclasses.field(default_factory=set)


_STATES: "weakref.WeakKeyDictionary[object, WriterState]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class SummaryRecord:
    """One summary to write: its tag, metadata and value."""

    tag: str
    metadata: summary_pb2.SummaryMetadata
    tensor: tensor_pb2.TensorProto


class EventSink:
    """Writes SummaryRecords at a step into a SummaryWriter or a logdir; use as a context manager."""

    def __init__(self, writer):
        if isinstance(writer, (str, os.PathLike)):
            self.logdir = os.fspath(writer)
            if not self.logdir:
                raise ValueError("logdir path is empty; pass the run directory, e.g. 'runs/demo'")
            os.makedirs(self.logdir, exist_ok=True)
            self._event_writer = EventFileWriter(self.logdir)
            self._file_writer = None
            self.state = WriterState()
        elif hasattr(writer, "_get_file_writer") and hasattr(writer, "get_logdir"):
            self.logdir = writer.get_logdir()
            self._event_writer = None
            self._file_writer = writer._get_file_writer()
            self.state = _STATES.setdefault(writer, WriterState())
        else:
            raise TypeError(
                f"writer must be a torch.utils.tensorboard.SummaryWriter or a logdir path, got {type(writer).__name__}"
            )

    def write(self, record: SummaryRecord, step: int) -> None:
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=record.tag, metadata=record.metadata, tensor=record.tensor)]
        )
        if self._file_writer is not None:
            self._file_writer.add_summary(summary, global_step=int(step))
        else:
            self._event_writer.add_event(event_pb2.Event(summary=summary, step=int(step), wall_time=time.time()))

    def flush(self) -> None:
        (self._file_writer or self._event_writer).flush()

    def close(self) -> None:
        """Flush; close the event file when this sink opened it (logdir paths)."""
        self.flush()
        if self._event_writer is not None:
            self._event_writer.close()

    def __enter__(self) -> "EventSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
