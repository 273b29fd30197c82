"""The model saved next to a run, loadable by TensorBoard without the user's code.

Layout of ``<run>/plugins/aevis/models/<fingerprint>/`` (content-addressed: analyses of
the same weights share one artifact, each training step's weights get their own):

- ``program.json``: the ``torch.export`` program (the graph of ATen ops with the module
  hierarchy) as the JSON of ``torch._export.serde.serialize``; batch size dynamic;
- ``weights.pt``, ``constants.pt``: ``dict[str, Tensor]`` written by ``torch.save``, read
  with ``torch.load(weights_only=True)``;
- ``meta.json``: artifact version, class names, input size, gated layers, the step.

Why not ``torch.export.save`` / ``torch.export.load``: in torch 2.14 ``load`` retries a
failed ``weights_only=True`` unpickling with ``weights_only=False`` (arbitrary code), turns
the program's ``guards_code`` strings into Python it executes, and hands symbolic shape
strings to ``sympy.sympify`` (``eval``). :func:`load_model_artifact` therefore reads the
weights itself with ``weights_only=True``, drops the guards, and checks the JSON before
torch sees it: every call target must be an ATen / prims operator or ``operator.getitem``,
every symbolic expression must match a small arithmetic grammar, and no custom (TorchBind)
objects may appear. Anything else is refused with :class:`ModelArtifactError`.

Gated forward passes: :func:`load_model_artifact` rebuilds the checked program with
:mod:`program_loader` (torch's own loader, ``torch.export.unflatten`` of the deserialised
program, where that one does not support it), so every submodule keeps the module path
it had in the user's model (``model.layer1.0`` ...) and forward hooks on it fire: the
gating hooks (``gating.GateHooks``) work on the loaded model exactly as on the original.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import inspect
import io
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

if TYPE_CHECKING:  # torch is imported where it is used: reading a run's index must not import it
    import torch
    from torch import nn

ARTIFACT_VERSION = 1
PROGRAM_FILE = "program.json"
WEIGHTS_FILE = "weights.pt"
CONSTANTS_FILE = "constants.pt"
META_FILE = "meta.json"
logger = logging.getLogger(__name__)
MAX_BATCH = 4096
# Largest file of each kind the server reads (an artifact over these is refused with a 4xx, not read):
# resnet50's program.json is ~3 MB and its weights.pt ~100 MB.
MAX_FILE_BYTES = {META_FILE: 1 << 20, PROGRAM_FILE: 256 << 20, WEIGHTS_FILE: 2 << 30, CONSTANTS_FILE: 2 << 30}
ORPHAN_AGE_S = 3600.0  # a staging directory older than this has no live writer (writing one takes seconds)
_STAGING, _OLD = ".staging-", ".old-"
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:60] or "host"
# torch.export's deserializer keeps its state in a module global (_CURRENT_DESERIALIZER): two threads
# deserialising at once fail with an AssertionError. Every torch read of an artifact holds this lock.
_TORCH_READ_LOCK = threading.Lock()

_ALLOWED_TARGET_PREFIXES = ("torch.ops.aten.", "torch.ops.prims.")
_ALLOWED_TARGETS = {"_operator.getitem"}
_SYMBOL_NAME = re.compile(r"^[a-z]+\d+$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]*$")  # "-": legal in module names (torchvision regnet: block4-11)
_VERSION = re.compile(r"^[A-Za-z0-9_.+-]*$")
# A module stack entry is "key,path,type": the type is the class's qualified name, kept as a display
# string by torch (never imported), with "<locals>" for a class defined inside a function. The other
# entry is torch.export's placeholder for nodes its own passes insert (a batch-size node when the model
# calls x.size(0): ``torch._export.passes._node_metadata_hook``), which ``torch.export.unflatten`` knows.
_EMPTY_STACK_KEY = "_empty_nn_module_stack_from_metadata_hook"
_MODULE_ENTRY = rf"L__self__[A-Za-z0-9_.@-]*,[A-Za-z0-9_.-]*,[A-Za-z0-9_.<>]+|{_EMPTY_STACK_KEY},{_EMPTY_STACK_KEY},{_EMPTY_STACK_KEY}"
_MODULE_STACK = re.compile(rf"^(?:{_MODULE_ENTRY})(?:;{_MODULE_ENTRY})*$")
_PYTREE_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}
_DROPPED_METADATA = {"stack_trace", "torch_fn"}
_EXPR_TOKEN = re.compile(r"\s+|\d+(?:\.\d+)?|'[a-z]+\d+'|[A-Za-z_][A-Za-z_0-9]*|\*\*|//|[-+*/(),=<>%]")
_EXPR_NAMES = {
    "Symbol", "Integer", "Float", "Rational", "positive", "integer", "real", "nonnegative", "True", "False",
    "Max", "Min", "Abs", "oo", "Mul", "Add", "Pow", "Mod", "FloorDiv", "CeilDiv", "CleanDiv", "ModularIndexing",
    "Where", "PythonMod", "CeilToInt", "FloorToInt", "TruncToInt", "TruncToFloat", "RoundToInt", "RoundDecimal",
    "ToFloat", "IntTrueDiv", "FloatTrueDiv", "FloatPow", "PowByNatural", "LShift", "RShift", "Identity",
    "IsNonOverlappingAndDenseIndicator",
}


class ModelArtifactError(ValueError):
    """A model artifact that cannot be saved, or is missing, damaged or unsafe to load."""


FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")


def model_fingerprint(model: nn.Module, example_input: torch.Tensor) -> str:
    """16 hex digits of SHA-256 over the model's class, parameter and buffer names, shapes
    and bytes, and the input's (C, H, W): equal fingerprints mean the same artifact."""
    import torch

    digest = hashlib.sha256(type(model).__qualname__.encode())
    digest.update(repr(tuple(example_input.shape[-3:])).encode())
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def artifact_dir(run_logdir: str, fingerprint: str) -> str:
    """``<run_logdir>/plugins/aevis/models/<fingerprint>`` (see :func:`model_fingerprint`)."""
    if not isinstance(fingerprint, str) or not FINGERPRINT.match(fingerprint):
        raise ModelArtifactError(f"model artifact id {fingerprint!r} is not 16 hex digits; the run's manifest is damaged")
    return os.path.join(os.fspath(run_logdir), "plugins", "aevis", "models", fingerprint)


def save_model_artifact(
    model: nn.Module,
    example_input: torch.Tensor,
    directory: str,
    *,
    step: Optional[int] = None,
    gated_layers: Sequence[str] = (),
) -> str:
    """Export ``model`` (images (B, C, H, W) in [0, 1] -> logits) to ``directory``; returns it.

    The batch dimension is dynamic (1..MAX_BATCH); C, H, W are those of
    ``example_input`` (C, H, W) or (B, C, H, W). An existing artifact is replaced
    atomically (a killed writer leaves the old one or the new one, never half of one);
    what killed writers left next to it is removed first (:func:`remove_orphans`).
    """
    import torch
    from torch._export.serde import serialize as serde

    example = torch.as_tensor(example_input, dtype=torch.float32).detach().cpu()
    if example.dim() == 3:
        example = example[None]
    if example.dim() != 4:
        raise ModelArtifactError(f"example input has shape {tuple(example.shape)}; expected (C, H, W) or (B, C, H, W)")
    example = example[:1].repeat(2, 1, 1, 1)  # batch 2: a batch of 1 would be specialised to 1
    if any(t.device.type != "cpu" for t in [*model.parameters(), *model.buffers()]):
        model = copy.deepcopy(model).cpu()  # export on the CPU (a copy: the user's model stays where it is), so
        # the weights load on a server without the training machine's GPU
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(
            model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
        )
        # older torch (2.11) has no serialize_example_inputs: it serialises them, and they are not written
        options = {"serialize_example_inputs": False} if "serialize_example_inputs" in inspect.signature(serde.serialize).parameters else {}
        artifact = serde.serialize(program, **options)
    except Exception as exc:
        raise ModelArtifactError(
            f"could not export the model with torch.export ({type(exc).__name__}: {exc}); "
            "pass save_model=False to log the analysis without the model"
        ) from exc
    finally:
        model.train(was_training)

    meta = {
        "artifact_version": ARTIFACT_VERSION,
        "torch_version": torch.__version__,
        "input_shape": list(example.shape[1:]),
        "class_names": list(getattr(model, "class_names", None) or []) or None,
        "gated_layers": list(gated_layers),
        "step": None if step is None else int(step),
    }
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    remove_orphans(parent)
    staging = os.path.join(parent, _scratch_name(_STAGING))
    os.makedirs(staging)
    try:
        for file_name, data in (
            (PROGRAM_FILE, artifact.exported_program),
            (WEIGHTS_FILE, artifact.state_dict),
            (CONSTANTS_FILE, artifact.constants or _empty_tensor_dict()),
            (META_FILE, json.dumps(meta).encode("utf-8")),
        ):
            with open(os.path.join(staging, file_name), "wb") as f:
                f.write(data)
        old = None
        if os.path.exists(directory):
            old = os.path.join(parent, _scratch_name(_OLD))
            os.rename(directory, old)
        os.rename(staging, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _scratch_name(prefix: str) -> str:
    """``<prefix><host>-<pid>-<random>``: whose it is, so :func:`remove_orphans` can tell a live writer's."""
    return f"{prefix}{_HOST}-{os.getpid()}-{uuid.uuid4().hex}"


def remove_orphans(models_dir: str, now: Optional[float] = None) -> List[str]:
    """Remove the ``.staging-*`` / ``.old-*`` directories killed writers left in ``models_dir``.

    One is an orphan when its writer (host and pid in its name) is a process of this host
    that no longer runs or, for a writer of another host (or a name without a pid), when
    it is older than ``ORPHAN_AGE_S``. A live writer's directory is kept. Returns the
    paths removed; a directory that cannot be removed is left (the next writer tries again).
    """
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(models_dir))
    except OSError:
        return removed
    for entry in entries:
        prefix = _STAGING if entry.name.startswith(_STAGING) else _OLD if entry.name.startswith(_OLD) else None
        if prefix is None:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        owner = entry.name[len(prefix):].rsplit("-", 2)
        local = len(owner) == 3 and owner[0] == _HOST and owner[1].isdigit()
        if (not _process_alive(int(owner[1]))) if local else age > ORPHAN_AGE_S:
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.exists(entry.path):
                removed.append(entry.path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a pid no process can have: then the age rule decides)
    return True


def _empty_tensor_dict() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({}, buffer)
    return buffer.getvalue()


def read_artifact_file(directory: str, name: str) -> bytes:
    """The bytes of one artifact file, or ModelArtifactError naming the file, the problem
    (missing, a directory, a symbolic-link loop, no permission, an I/O error, larger than
    ``MAX_FILE_BYTES[name]``) and the fix."""
    path = os.path.join(directory, name)
    relog = "re-log the analysis with add_analysis(..., save_model=True)"
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES[name]:
                raise ModelArtifactError(
                    f"model artifact file {path} is {size} bytes, more than the {MAX_FILE_BYTES[name]} bytes a "
                    f"{name} may have; it is damaged or not an AEVis artifact: {relog}")
            data = f.read(MAX_FILE_BYTES[name] + 1)
    except FileNotFoundError:
        if name == META_FILE and not os.path.isdir(directory):
            raise ModelArtifactError(f"no model artifact at {directory}: {relog}") from None
        raise ModelArtifactError(f"model artifact file {path} is missing: {relog}") from None
    except IsADirectoryError:
        raise ModelArtifactError(f"model artifact file {path} is a directory, not a file: remove it and {relog}") from None
    except NotADirectoryError:
        raise ModelArtifactError(f"model artifact {directory} is not a directory: remove it and {relog}") from None
    except PermissionError:
        raise ModelArtifactError(f"cannot read model artifact file {path}: permission denied; let the user running "
                                 f"TensorBoard read it (chmod), or {relog}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelArtifactError(f"model artifact file {path} is a symbolic-link loop: remove it and {relog}") from None
        raise ModelArtifactError(f"cannot read model artifact file {path} ({exc.strerror or exc}); check the disk, "
                                 f"or {relog}") from None
    if len(data) != size:
        raise ModelArtifactError(f"model artifact file {path} changed while it was read; retry, or {relog}")
    return data


def read_artifact_meta(directory: str) -> Dict[str, Any]:
    """The ``meta.json`` of an artifact (JSON only, nothing executed)."""
    path = os.path.join(directory, META_FILE)
    data = read_artifact_file(directory, META_FILE)
    try:
        meta = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"model artifact metadata {path} is not valid JSON ({exc}); re-log the analysis") from exc
    if not isinstance(meta, dict) or meta.get("artifact_version") != ARTIFACT_VERSION:
        version = meta.get("artifact_version") if isinstance(meta, dict) else None
        raise ModelArtifactError(
            f"model artifact version {version!r} at {directory} is not supported (this AEVis reads version "
            f"{ARTIFACT_VERSION}); upgrade tensorboard-plugin-aevis or re-log the analysis"
        )
    return meta


def load_model_artifact(directory: str) -> nn.Module:
    """Load an artifact -> ``nn.Module``: images (B, C, H, W) in [0, 1] -> logits (B, K).

    The module is the unflattened export (submodules at their original paths), in eval
    mode with frozen weights; it carries ``class_names`` (list or None), ``input_shape``
    ((C, H, W)), ``gated_layers`` and ``step`` (the training step it was saved at).
    Raises ModelArtifactError when the artifact is missing, unreadable (any OSError),
    damaged, oversized or unsafe. Thread-safe.
    """
    return module_from_program(read_program(directory))


class ArtifactProgram:
    """A read artifact and its ``meta.json``; see :func:`module_from_program`. ``tree`` is the module
    tree :mod:`program_loader` rebuilt, or None when it fell back to torch's loader: then ``program``
    is the ``torch.export`` program."""

    def __init__(self, directory: str, meta: Dict[str, Any], tree: Any = None, program: Any = None):
        self.directory, self.meta, self.tree, self.program = directory, meta, tree, program


def read_program(directory: str, *, torch_loader: bool = False) -> ArtifactProgram:
    """Read and check an artifact's files and rebuild its program (raises as :func:`load_model_artifact`).

    The program is rebuilt by :func:`program_loader.build_program` (no torch.export deserializer,
    whose import alone takes seconds); a program it does not support (it says why: logged) is
    deserialised by torch's loader instead, as always with ``torch_loader=True`` (the reference).
    Thread-safe: torch's part runs under a process-wide lock (its deserializer keeps global state).
    """
    from tensorboard_plugin_aevis import program_loader

    meta = read_artifact_meta(directory)
    program_bytes = read_artifact_file(directory, PROGRAM_FILE)
    weights_bytes = read_artifact_file(directory, WEIGHTS_FILE)
    constants_bytes = read_artifact_file(directory, CONSTANTS_FILE)
    try:
        program_json = json.loads(program_bytes.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"{PROGRAM_FILE} in {directory} is not valid JSON ({exc}); re-log the analysis") from exc
    program_json = sanitise_program_json(program_json)
    state_dict = _load_tensor_dict(os.path.join(directory, WEIGHTS_FILE), weights_bytes)
    constants = _load_tensor_dict(os.path.join(directory, CONSTANTS_FILE), constants_bytes)
    if not torch_loader:
        try:
            return ArtifactProgram(directory, meta, tree=program_loader.build_program(program_json, state_dict, constants))
        except program_loader.UnsupportedProgram as exc:
            logger.info("model artifact %s: %s is not supported by AEVis's loader; using torch's", directory, exc)
        except Exception as exc:  # noqa: BLE001 - a malformed program: torch's loader reports it (or reads it)
            logger.warning("model artifact %s: AEVis's loader failed (%s: %s); using torch's", directory, type(exc).__name__, exc)
    from torch._export.serde import serialize as serde

    with _TORCH_READ_LOCK:
        try:
            schema_program = program_dataclass(serde, program_json)
            if schema_program is None:  # another torch's serde: its own (slower) conversion
                program = serde.deserialize(
                    serde.SerializedArtifact(json.dumps(program_json).encode("utf-8"), state_dict, constants, ((), {}))
                )
            else:
                program = serde.ExportedProgramDeserializer().deserialize(schema_program, state_dict, constants, ((), {}))
        except Exception as exc:
            raise _rebuild_error(directory, meta, exc) from exc
    return ArtifactProgram(directory, meta, program=program)


def program_dataclass(serde: Any, program_json: Dict[str, Any]) -> Any:
    """The checked program JSON as torch's schema dataclasses (``serde.ExportedProgram``), as
    ``serde._dict_to_dataclass`` makes them, but with each class's type hints computed once
    (torch's computes them per object; why and what it saves: docs/method.md, "Contribution
    analysis"). None when this torch's serde lacks the helpers it mirrors.

    Raises ModelArtifactError when the JSON names an unknown schema class or a malformed union."""
    import dataclasses
    import types
    import typing

    resolve, union, schema = (getattr(serde, n, None) for n in ("_resolve_schema_cls", "_Union", "schema"))
    if resolve is None or union is None or schema is None or not hasattr(serde, "ExportedProgramDeserializer"):
        return None
    hints: Dict[Any, Dict[str, Any]] = {}

    def type_hints(cls: Any) -> Dict[str, Any]:
        if cls not in hints:
            hints[cls] = typing.get_type_hints(cls, globalns=vars(schema))
        return hints[cls]

    def convert(cls: Any, data: Any) -> Any:
        cls = resolve(cls)
        if isinstance(cls, str):
            raise ModelArtifactError(f"{PROGRAM_FILE} names an unknown schema class {cls!r}; re-log the analysis")
        if typing.get_origin(cls) is typing.Annotated:
            return convert(cls.__origin__, data)
        if typing.get_origin(cls) in (typing.Union, types.UnionType) and type(None) in typing.get_args(cls):
            return None if data is None else convert(typing.get_args(cls)[0], data)
        if isinstance(cls, type) and issubclass(cls, union):
            if not isinstance(data, dict) or len(data) != 1:
                raise ModelArtifactError(f"{PROGRAM_FILE}: a {cls.__name__} must be an object with one key; re-log the analysis")
            (kind, value), = data.items()
            return cls.create(**{kind: convert(type_hints(cls)[kind], value)})
        if dataclasses.is_dataclass(cls):
            fields = type_hints(cls)
            return cls(**{f.name: convert(fields[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data})
        if isinstance(data, list):
            return [convert(typing.get_args(cls)[0], d) for d in data] if data else data
        if isinstance(data, dict):
            return {k: convert(typing.get_args(cls)[1], v) for k, v in data.items()}
        return float(data) if cls is float else data

    return convert(serde.ExportedProgram, program_json)


def module_from_program(artifact: ArtifactProgram) -> nn.Module:
    """A new module (its own submodules, so hooks on it touch no other) of a read program, in
    eval mode with frozen weights and the attributes of :func:`load_model_artifact`. Modules
    made from one program share its weight tensors."""
    import torch

    if artifact.tree is not None:
        module = artifact.tree.instantiate()
    else:
        with _TORCH_READ_LOCK:
            try:
                module = torch.export.unflatten(artifact.program)
            except Exception as exc:
                raise _rebuild_error(artifact.directory, artifact.meta, exc) from exc
        shared = artifact.program.state_dict  # torch.export.unflatten copies the weights: use the program's own
        for prefix, submodule in module.named_modules():
            for store in (submodule._parameters, submodule._buffers):
                for name, tensor in list(store.items()):
                    original = shared.get(f"{prefix}.{name}" if prefix else name)
                    if tensor is not None and isinstance(original, torch.Tensor) and original.shape == tensor.shape and original.dtype == tensor.dtype:
                        store[name] = torch.nn.Parameter(original, requires_grad=False) if isinstance(tensor, torch.nn.Parameter) else original
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    meta = artifact.meta
    module.class_names = meta.get("class_names")
    module.input_shape = tuple(meta.get("input_shape") or ())
    module.gated_layers = list(meta.get("gated_layers") or [])
    module.step = meta.get("step")
    return module


def _rebuild_error(directory: str, meta: Dict[str, Any], exc: Exception) -> ModelArtifactError:
    import torch

    return ModelArtifactError(
        f"model artifact {directory} could not be rebuilt ({type(exc).__name__}: {exc}); "
        f"it was saved with torch {meta.get('torch_version')}, this is torch {torch.__version__}: re-log the analysis"
    )


def _load_tensor_dict(path: str, data: bytes) -> Dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a ``dict[str, Tensor]`` (the file's bytes); anything else is refused."""
    import torch

    try:
        value = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelArtifactError(
            f"{path} is not a plain tensor file and was not loaded ({type(exc).__name__}); "
            "the artifact is damaged (truncated?) or was replaced: re-log the analysis"
        ) from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        raise ModelArtifactError(f"{path} does not hold a dict of tensors; re-log the analysis")
    return value


def sanitise_program_json(program: Any) -> Dict[str, Any]:
    """Check an exported-program JSON and return the part torch may see, else refuse it.

    Every string must be an identifier-like name (node names, module paths: they end up
    in generated Python source), a call target must be an ATen / prims operator or
    ``operator.getitem``, symbolic expressions must match :func:`check_sym_expr`, pytree
    specs may name only tuples / lists / dicts. Stack traces and ``guards_code`` (Python
    source) are dropped.
    """
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise ModelArtifactError(f"{PROGRAM_FILE} is not a torch.export program; re-log the analysis")
    program = dict(program, guards_code=[])
    stack: List[Any] = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        metadata = item.get("metadata")
        if isinstance(metadata, dict):
            item["metadata"] = {k: v for k, v in metadata.items() if k not in _DROPPED_METADATA}
        for key, value in item.items():
            if not _NAME.match(str(key)):
                raise ModelArtifactError(f"{PROGRAM_FILE} has a disallowed key {str(key)[:80]!r}; refused")
            if isinstance(value, str):
                _check_string(key, value)
            else:
                stack.append(value)
    return program


def _check_string(key: str, value: str) -> None:
    if key == "target":
        if not (value.startswith(_ALLOWED_TARGET_PREFIXES) and _NAME.match(value) or value in _ALLOWED_TARGETS):
            raise ModelArtifactError(f"{PROGRAM_FILE} calls {value[:80]!r}, which is not a tensor operator; refused")
        return
    if key == "expr_str":
        check_sym_expr(value)
        return
    if key in ("in_spec", "out_spec"):
        ok = _pytree_spec_is_plain(value)
    elif key == "nn_module_stack":
        ok = bool(_MODULE_STACK.match(value))
    elif key == "torch_version":
        ok = bool(_VERSION.match(value))
    elif key in ("class_fqn", "custom_obj"):
        ok = False
    else:
        ok = bool(_NAME.match(value))
    if not ok:
        what = "name" if key not in ("in_spec", "out_spec", "nn_module_stack", "torch_version") else key
        raise ModelArtifactError(f"{PROGRAM_FILE} has a disallowed {what} {value[:80]!r} (in {key!r}); refused")


def _pytree_spec_is_plain(spec: str) -> bool:
    try:
        tree = json.loads(spec)
    except ValueError:
        return False
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") not in _PYTREE_TYPES:
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not (_NAME.match(item) or _pytree_context_is_plain(item)):
            return False
    return True


def _pytree_context_is_plain(context: str) -> bool:
    try:
        value = json.loads(context)
    except ValueError:
        return False
    return value is None or (isinstance(value, list) and all(isinstance(v, (str, int)) and _NAME.match(str(v)) for v in value))


def check_sym_expr(expr: Any) -> None:
    """Allow only arithmetic over shape symbols (what ``sympy.sympify`` may safely evaluate)."""
    if not isinstance(expr, str) or len(expr) > 2000:
        raise ModelArtifactError(f"{PROGRAM_FILE} has a malformed symbolic expression; refused")
    position = 0
    while position < len(expr):
        match = _EXPR_TOKEN.match(expr, position)
        if match is None:
            raise ModelArtifactError(f"{PROGRAM_FILE} has a disallowed symbolic expression {expr[:80]!r}; refused")
        token = match.group(0)
        if token[0].isalpha() or token[0] == "_":
            if token not in _EXPR_NAMES and not _SYMBOL_NAME.match(token):
                raise ModelArtifactError(f"{PROGRAM_FILE} has a disallowed name {token!r} in {expr[:80]!r}; refused")
        position = match.end()
