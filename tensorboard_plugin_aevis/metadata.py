"""Plugin name and the versioned plugin-data proto every AEVis summary carries.

Every summary the AEVis writer logs has ``plugin_data.plugin_name == "aevis"`` and
``plugin_data.content`` = a serialised ``AEVisPluginData`` message::

    message AEVisPluginData {
      uint32 version = 1;        // run-format version (PLUGIN_DATA_VERSION)
      Kind kind = 2;             // what the time series holds
      string analysis_name = 3;  // the name given to add_analysis
      string method = 4;         // "constrained" / "dgr"; empty for per-name parts
      int64 step = 5;            // the step the series belongs to
      string writer_id = 6;      // manifests: random id of the writer that logged it
      uint64 writer_sequence = 7;  // manifests: 1, 2, ... per writer (gaps = lost analyses)
    }

The message is defined at import time with ``descriptor_pb2`` + ``message_factory``
rather than with committed ``protoc`` output: generated ``_pb2`` modules are tied to
the protobuf runtime version that generated them (TensorBoard itself accepts a wide
range), while a runtime-built descriptor works with every protobuf >= 3.20 and needs
no build step. The wire format is the same either way.

The reader finds analyses from this metadata, never by parsing tags, so analysis
names may contain any character (``/`` included).
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "aevis"
PLUGIN_DATA_VERSION = 1

# Kinds of time series (values of the ``Kind`` enum; 0 is reserved for "unset").
KIND_MANIFEST = "manifest"  # tensor: the analysis JSON (logged last)
KIND_ARRAYS = "arrays"  # blob sequence: npz of the numeric arrays + one PNG per example
KIND_GRAPH = "graph"  # blob sequence: the model DAG JSON
KIND_LEARNED_FEATURES = "learned_features"  # blob sequence: top-k boxes per feature map
KIND_REFERENCE_IMAGES = "reference_images"  # blob sequence: the reference images (PNG)
KINDS = (KIND_MANIFEST, KIND_ARRAYS, KIND_GRAPH, KIND_LEARNED_FEATURES, KIND_REFERENCE_IMAGES)

# Small JSON values are tensors; bulky ones are blob sequences (``docs/architecture.md``, Run format).
DATA_CLASS_OF_KIND = {
    KIND_MANIFEST: summary_pb2.DATA_CLASS_TENSOR,
    KIND_ARRAYS: summary_pb2.DATA_CLASS_BLOB_SEQUENCE,
    KIND_GRAPH: summary_pb2.DATA_CLASS_BLOB_SEQUENCE,
    KIND_LEARNED_FEATURES: summary_pb2.DATA_CLASS_BLOB_SEQUENCE,
    KIND_REFERENCE_IMAGES: summary_pb2.DATA_CLASS_BLOB_SEQUENCE,
}


def _build_message_class():
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tensorboard_plugin_aevis/plugin_data.proto", package="tensorboard_plugin_aevis", syntax="proto3"
    )
    msg = file_proto.message_type.add(name="AEVisPluginData")
    kind_enum = msg.enum_type.add(name="Kind")
    kind_enum.value.add(name="KIND_UNSET", number=0)
    for number, kind in enumerate(KINDS, start=1):
        kind_enum.value.add(name=kind.upper(), number=number)
    F = descriptor_pb2.FieldDescriptorProto
    fields = [
        ("version", F.TYPE_UINT32, None),
        ("kind", F.TYPE_ENUM, ".tensorboard_plugin_aevis.AEVisPluginData.Kind"),
        ("analysis_name", F.TYPE_STRING, None),
        ("method", F.TYPE_STRING, None),
        ("step", F.TYPE_INT64, None),
        ("writer_id", F.TYPE_STRING, None),
        ("writer_sequence", F.TYPE_UINT64, None),
    ]
    for number, (name, ftype, type_name) in enumerate(fields, start=1):
        field = msg.field.add(name=name, number=number, type=ftype, label=F.LABEL_OPTIONAL)
        if type_name:
            field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    descriptor = pool.FindMessageTypeByName("tensorboard_plugin_aevis.AEVisPluginData")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)  # protobuf < 4.21


AEVisPluginData = _build_message_class()


class PluginDataError(ValueError):
    """Plugin data that this AEVis cannot read (corrupt, or from a newer AEVis)."""


def create_summary_metadata(
    kind: str, analysis_name: str, method: str = "", step: int = 0, writer_id: str = "", writer_sequence: int = 0
) -> summary_pb2.SummaryMetadata:
    """SummaryMetadata for one AEVis time series: plugin ``aevis``, the data class of ``kind``.

    ``writer_id`` / ``writer_sequence`` number the manifests one writer logs (1, 2, ...),
    so the reader can tell when some were lost (sampling flags, damaged event files).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown AEVis summary kind {kind!r}; expected one of {KINDS}")
    if not isinstance(analysis_name, str) or not analysis_name:
        raise ValueError(f"analysis name must be a non-empty string, got {analysis_name!r}")
    content = AEVisPluginData(
        version=PLUGIN_DATA_VERSION, kind=KINDS.index(kind) + 1, analysis_name=analysis_name, method=method, step=int(step),
        writer_id=writer_id, writer_sequence=int(writer_sequence),
    )
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content.SerializeToString()),
        data_class=DATA_CLASS_OF_KIND[kind],
    )


def parse_plugin_metadata(content: bytes) -> dict:
    """Parse ``plugin_data.content`` -> dict with the message's fields, ``kind`` as a string.

    Raises PluginDataError for bytes that are not this message or for a format version
    newer than this AEVis understands.
    """
    message = AEVisPluginData()
    try:
        message.ParseFromString(bytes(content))
    except Exception as exc:  # protobuf raises its own DecodeError
        raise PluginDataError(f"AEVis plugin data is corrupt ({exc}); re-log the analysis") from exc
    if message.version == 0 or message.version > PLUGIN_DATA_VERSION:
        raise PluginDataError(
            f"AEVis run-format version {message.version} is not supported (this AEVis reads version "
            f"{PLUGIN_DATA_VERSION}); upgrade tensorboard-plugin-aevis"
        )
    if not 1 <= message.kind <= len(KINDS):
        raise PluginDataError(f"unknown AEVis summary kind number {message.kind}; upgrade tensorboard-plugin-aevis")
    return {
        "version": message.version,
        "kind": KINDS[message.kind - 1],
        "analysis_name": message.analysis_name,
        "method": message.method,
        "step": int(message.step),
        "writer_id": message.writer_id,
        "writer_sequence": int(message.writer_sequence),
    }
