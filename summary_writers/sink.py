"""Where AEVis summaries go: the user's SummaryWriter, or an event file opened on a logdir.

``writer`` in every op is either a ``torch.utils.tensorboard.SummaryWriter`` (events go
through its public ``file_writer.add_summary``, the route torch's own ``add_hparams``
takes, so they land in the user's own event file; a closed writer has none, and then
the events go to its logdir's own event file, as for a path) or a logdir path (``str`` /
``os.PathLike``: TensorBoard's own ``EventFileWriter``, one per directory and process,
opened on first use and kept open so all of a process's analyses go to one event file;
closed at exit). Every op flushes when it is done.

One event file per path matters: TensorBoard reads a run's event files in name order
and, while reloading, ignores a new file whose name sorts before the one it is reading
(``...<pid>.10`` sorts before ``...<pid>.9``).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import threading
import time
import uuid
import weakref
from typing import Optional, Set

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


@dataclasses.dataclass
class WriterState:
    """What one writer has logged so far: its id, a manifest counter, per-name parts logged once."""

    writer_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    manifests_logged: int = 0
    graphs_logged: Set[str] = dataclasses.field(default_factory=set)
    reference_images_logged: Set[str] = dataclasses.field(default_factory=set)
    first_model: Optional[str] = None  # fingerprint of the first model artifact this writer saved
    latest_model: Optional[str] = None  # and of the latest (the save_model policy keeps these two)


_STATES: "weakref.WeakKeyDictionary[object, WriterState]" = weakref.WeakKeyDictionary()
_PATH_WRITERS: "dict[str, tuple]" = {}  # absolute logdir -> (EventFileWriter, WriterState)
_PATH_WRITERS_LOCK = threading.Lock()


def _path_writer(logdir: str):
    """The process's EventFileWriter and WriterState for ``logdir`` (opened on first use)."""
    key = os.path.abspath(logdir)
    with _PATH_WRITERS_LOCK:
        if key in _PATH_WRITERS and not os.path.isdir(key):  # the run directory was deleted
            _PATH_WRITERS.pop(key)[0].close()
        if key not in _PATH_WRITERS:
            os.makedirs(key, exist_ok=True)
            _PATH_WRITERS[key] = (EventFileWriter(key), WriterState())
        return _PATH_WRITERS[key]


@atexit.register
def close_path_writers() -> None:
    """Flush and close every event file opened for a logdir path."""
    with _PATH_WRITERS_LOCK:
        for event_writer, _ in _PATH_WRITERS.values():
            event_writer.close()
        _PATH_WRITERS.clear()


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
            self._event_writer, self.state = _path_writer(self.logdir)
            self._file_writer = None
        elif hasattr(writer, "file_writer") and hasattr(writer, "get_logdir"):
            self.logdir = writer.get_logdir()
            self.state = _STATES.setdefault(writer, WriterState())
            self._file_writer = writer.file_writer
            self._event_writer = None
            if self._file_writer is None:  # closed by the user: write beside it, into the logdir's own file
                self._event_writer = _path_writer(self.logdir)[0]
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

    def __enter__(self) -> "EventSink":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
