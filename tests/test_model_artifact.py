"""The model artifact: exported, reloaded without the user's code, never unpickled unsafely."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from torch import nn

from tensorboard_plugin_aevis import model_artifact
from tensorboard_plugin_aevis.model_artifact import (
    ModelArtifactError, artifact_dir, load_model_artifact, model_fingerprint, save_model_artifact,
)
from tensorboard_plugin_aevis.models import ClassifierWrapper


class Block(nn.Module):
    """A residual block: the skip connection must survive export."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)) + x)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Block(8), nn.MaxPool2d(2), Block(8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    model = ClassifierWrapper(net, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), class_names=[f"c{i}" for i in range(5)]).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model.model[2].bn.running_mean.uniform_(-0.5, 0.5)
        model.model[2].bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model()
    directory = artifact_dir(str(tmp_path_factory.mktemp("run")), "0123456789abcdef")
    save_model_artifact(model, torch.rand(3, 16, 16), directory, step=12, gated_layers=["model.2", "model.4"])
    return model, directory


def test_reloaded_model_matches_original_at_any_batch_size(saved):
    model, directory = saved
    restored = load_model_artifact(directory)
    for batch in (1, 3, 7):
        x = torch.rand(batch, 3, 16, 16)
        torch.testing.assert_close(restored(x), model(x), rtol=1e-5, atol=1e-5)
    assert restored.class_names == [f"c{i}" for i in range(5)]
    assert restored.input_shape == (3, 16, 16) and restored.step == 12
    assert restored.gated_layers == ["model.2", "model.4"]
    assert not any(p.requires_grad for p in restored.parameters())


def test_gate_hooks_work_on_the_reloaded_model_by_module_path(saved):
    """Gated forward passes: the same gates on the same module paths give the same logits."""
    from tensorboard_plugin_aevis.gating import GateHooks

    model, directory = saved
    restored = load_model_artifact(directory)
    x = torch.rand(2, 3, 16, 16)
    gates = [torch.rand(2, 8, requires_grad=True), torch.rand(2, 8)]
    outputs = []
    for net in (model, restored):
        with GateHooks(net, ["model.2", "model.4"], record=True) as hooks:
            hooks.gates = gates
            outputs.append(net(x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(outputs[1].sum(), gates[0])  # gates are differentiable through it
    assert grad.abs().sum() > 0
    ungated = model(x)
    assert not torch.allclose(outputs[0], ungated)


def test_artifact_dir_accepts_only_fingerprints(tmp_path):
    for bad in ("a/b", "..", ".", "../../etc", "x\\y", "0123456789ABCDEF", None):
        with pytest.raises(ModelArtifactError, match="16 hex digits"):
            artifact_dir(str(tmp_path), bad)


def test_fingerprint_follows_the_weights_and_the_input_shape():
    model = tiny_model()
    x = torch.rand(3, 16, 16)
    first = model_fingerprint(model, x)
    assert first == model_fingerprint(tiny_model(), x)  # same seed, same weights
    assert first != model_fingerprint(model, torch.rand(3, 20, 20))
    with torch.no_grad():
        next(model.parameters())[0].flatten()[0] += 1e-3
    assert first != model_fingerprint(model, x)


def _copy(directory, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for name in os.listdir(directory):
        (target / name).write_bytes(open(os.path.join(directory, name), "rb").read())
    return target


class Evil:
    """Unpickling this creates a marker file (a stand-in for running any code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("victim", [model_artifact.WEIGHTS_FILE, model_artifact.CONSTANTS_FILE])
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_not_executed(saved, tmp_path, victim, writer):
    _, directory = saved
    copy = _copy(directory, tmp_path)
    marker = str(tmp_path / "pwned")
    payload = {"model.0.weight": Evil(marker)}
    if writer == "pickle":
        (copy / victim).write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, str(copy / victim))
    with pytest.raises(ModelArtifactError, match="not a plain tensor file"):
        load_model_artifact(str(copy))
    assert not os.path.exists(marker)


def test_program_replaced_by_a_pickle_is_refused(saved, tmp_path):
    _, directory = saved
    copy = _copy(directory, tmp_path)
    marker = str(tmp_path / "pwned")
    (copy / model_artifact.PROGRAM_FILE).write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(ModelArtifactError, match="not valid JSON"):
        load_model_artifact(str(copy))
    assert not os.path.exists(marker)


def _tamper(directory, tmp_path, edit):
    copy = _copy(directory, tmp_path)
    program = json.loads((copy / model_artifact.PROGRAM_FILE).read_text())
    edit(program)
    (copy / model_artifact.PROGRAM_FILE).write_text(json.dumps(program))
    return copy


def _first_node(program):
    return program["graph_module"]["graph"]["nodes"][0]


@pytest.mark.parametrize("edit, message", [
    (lambda p: _first_node(p).__setitem__("target", "torch.hub.load"), "not a tensor operator"),
    (lambda p: p["range_constraints"].__setitem__("__import__('os').system('touch pwned')", {}), "disallowed key"),
    (lambda p: p.__setitem__("guards_code", ["__import__('os').makedirs('pwned')"]), None),
    (lambda p: _first_node(p)["outputs"][0]["as_tensor"].__setitem__("name", 'x"); import os; os.makedirs("pwned'), "disallowed name"),
])
def test_tampered_program_json_runs_nothing(saved, tmp_path, monkeypatch, edit, message):
    _, directory = saved
    copy = _tamper(directory, tmp_path, edit)
    monkeypatch.chdir(tmp_path)
    if message is None:  # guards (Python source) are dropped, the model still loads
        load_model_artifact(str(copy))
    else:
        with pytest.raises(ModelArtifactError, match=message):
            load_model_artifact(str(copy))
    assert not os.path.exists(tmp_path / "pwned")


def test_symbolic_expressions_are_checked():
    model_artifact.check_sym_expr("Symbol('s77', positive=True, integer=True)")
    model_artifact.check_sym_expr("2*s0 + FloorDiv(s1, 2)")
    for bad in ("__import__('os').system('id')", "s0.__class__", "exec('x')", "Symbol('s0'); x"):
        with pytest.raises(ModelArtifactError):
            model_artifact.check_sym_expr(bad)


def test_missing_or_newer_artifact_is_a_clear_error(saved, tmp_path):
    with pytest.raises(ModelArtifactError, match="save_model=True"):
        load_model_artifact(str(tmp_path / "nothing"))
    _, directory = saved
    copy = _copy(directory, tmp_path)
    meta = json.loads((copy / model_artifact.META_FILE).read_text())
    (copy / model_artifact.META_FILE).write_text(json.dumps({**meta, "artifact_version": 99}))
    with pytest.raises(ModelArtifactError, match="upgrade"):
        load_model_artifact(str(copy))


def test_unexportable_model_names_the_opt_out(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.mean() > 0.5:  # data-dependent control flow: torch.export refuses it
                return x.flatten(1)[:, :3]
            return -x.flatten(1)[:, :3]

    with pytest.raises(ModelArtifactError, match="save_model=False"):
        save_model_artifact(DataDependent(), torch.rand(3, 4, 4), str(tmp_path / "m"))
    assert not os.path.exists(tmp_path / "m")


def test_resave_replaces_the_artifact(tmp_path):
    directory = str(tmp_path / "m")
    save_model_artifact(tiny_model(0), torch.rand(3, 16, 16), directory, step=1)
    second = tiny_model(1)
    save_model_artifact(second, torch.rand(3, 16, 16), directory, step=2)
    restored = load_model_artifact(directory)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(restored(x), second(x), rtol=1e-5, atol=1e-5)
    assert restored.step == 2
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no staging or old copies left behind


def test_model_reading_its_batch_size_round_trips(tmp_path):
    """``x.view(x.size(0), -1)`` (EfficientNet-Lite0's head, and many users' models) makes torch.export
    insert a batch-size node with its placeholder module stack, and a class defined inside a function
    has "<locals>" in its module stack: the loader accepts both (it refused them before, so contribution
    analysis failed on the demo's runs)."""

    class ViewsBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)).view(x.size(0), -1))

    torch.manual_seed(0)
    model = ClassifierWrapper(ViewsBatch(), (0.5,) * 3, (0.25,) * 3, class_names=["a", "b", "c"]).eval()
    directory = str(tmp_path / "m")
    save_model_artifact(model, torch.rand(3, 16, 16), directory, gated_layers=["model.conv"])
    assert model_artifact._EMPTY_STACK_KEY in (tmp_path / "m" / model_artifact.PROGRAM_FILE).read_text()
    restored = load_model_artifact(directory)
    x = torch.rand(5, 3, 16, 16)
    torch.testing.assert_close(restored(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vgg11", "mobilenet_v3_small", "densenet121", "regnet_x_400mf", "efficientnet-lite0"])
def test_model_zoo_round_trips_with_gates(name, tmp_path):
    """The architectures the engine supports reload from their artifact and gate the same way (regnet's
    module names hold "-": block4-11)."""
    from tensorboard_plugin_aevis.gating import GateHooks, select_layers
    from tensorboard_plugin_aevis.models import load_model

    torch.manual_seed(0)
    model = load_model(name)
    size = model.input_size if name == "efficientnet-lite0" else (64, 64)
    model.input_size = size
    x = torch.rand(2, 3, *size)
    layers = select_layers(model, x[:1])
    directory = str(tmp_path / "m")
    save_model_artifact(model, x[0], directory, gated_layers=layers)
    restored = load_model_artifact(directory)
    assert restored.gated_layers == layers
    with GateHooks(model, layers, record=True) as probe:
        model(x)
    gates = [torch.rand(2, a.shape[1]) for a in probe.activations]
    outputs = []
    for net in (model, restored):
        with GateHooks(net, layers) as hooks:
            hooks.gates = gates
            outputs.append(net(x))
    with torch.no_grad():
        ungated = model(x)
    scale = float(ungated.abs().max())  # random-weight mobilenet's logits are ~1e-10
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4 * scale)
    assert not torch.allclose(outputs[0], ungated, rtol=1e-2, atol=1e-2 * scale)
    torch.testing.assert_close(restored(x), ungated, rtol=1e-5, atol=1e-5 * scale)


# ----------------------------------------------------------------------- damaged files (issue #18)
def _damage(directory: str, kind: str) -> str:
    """Damage one file of a copied artifact; returns the file's name (the error must name it)."""
    name = model_artifact.PROGRAM_FILE if kind.startswith("program") else model_artifact.WEIGHTS_FILE
    path = os.path.join(directory, name)
    if kind.endswith("directory"):
        os.remove(path)
        os.mkdir(path)
    elif kind.endswith("loop"):
        os.remove(path)
        os.symlink(path, path)
    elif kind.endswith("truncated"):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif kind.endswith("oversized"):  # sparse: no disk used
        with open(path, "r+b") as f:
            f.truncate(model_artifact.MAX_FILE_BYTES[name] + 1)
    return name


@pytest.mark.parametrize("kind,message", [
    ("program_directory", "is a directory, not a file: remove it and re-log"),
    ("weights_directory", "is a directory, not a file: remove it and re-log"),
    ("program_loop", "symbolic-link loop: remove it and re-log"),
    ("weights_loop", "symbolic-link loop: remove it and re-log"),
    ("program_truncated", "is not valid JSON"),
    ("weights_truncated", "damaged \\(truncated\\?\\)"),
    ("program_oversized", "more than the .* bytes"),
    ("weights_oversized", "more than the .* bytes"),
])
def test_every_damaged_file_is_a_clear_error_naming_it(saved, tmp_path, kind, message):
    import shutil

    directory = str(tmp_path / "artifact")
    shutil.copytree(saved[1], directory)
    name = _damage(directory, kind)
    with pytest.raises(ModelArtifactError, match=message) as caught:
        load_model_artifact(directory)
    assert name in str(caught.value)


@pytest.mark.parametrize("error,message", [
    (PermissionError(13, "Permission denied"), "permission denied; let the user running TensorBoard read it"),
    (OSError(5, "Input/output error"), "Input/output error\\); check the disk"),
])
def test_unreadable_file_is_a_clear_error(saved, monkeypatch, error, message):
    # the OS refuses the read (as root no file mode can make it, so the refusal is injected at open)
    real_open = open
    weights = os.path.join(saved[1], model_artifact.WEIGHTS_FILE)

    def refusing_open(path, *args, **kwargs):
        if os.fspath(path) == weights:
            raise error
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(ModelArtifactError, match=message) as caught:
        load_model_artifact(saved[1])
    assert model_artifact.WEIGHTS_FILE in str(caught.value)


def test_artifact_path_that_is_a_file_is_a_clear_error(tmp_path):
    path = tmp_path / "0123456789abcdef"
    path.write_bytes(b"not a directory")
    with pytest.raises(ModelArtifactError, match="is not a directory"):
        model_artifact.read_artifact_meta(str(path))


def test_simultaneous_loads_of_one_artifact_all_succeed(saved):
    # torch's deserializer keeps a global: without the lock two threads fail with an AssertionError
    import concurrent.futures

    model, directory = saved
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        modules = list(pool.map(lambda _: load_model_artifact(directory), range(6)))
    x = torch.rand(2, 3, 16, 16)
    for module in modules:
        torch.testing.assert_close(module(x), model(x), rtol=1e-5, atol=1e-5)


def test_modules_from_one_program_share_weights_but_not_hooks(saved):
    model, directory = saved
    program = model_artifact.read_program(directory)
    first, second = model_artifact.module_from_program(program), model_artifact.module_from_program(program)
    assert first.get_submodule("model.2.conv") is not second.get_submodule("model.2.conv")
    assert first.get_submodule("model.2.conv").weight.data_ptr() == second.get_submodule("model.2.conv").weight.data_ptr()
    seen = []
    handle = first.get_submodule("model.2").register_forward_hook(lambda *a: seen.append(1))
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(second(x), model(x), rtol=1e-5, atol=1e-5)
    assert seen == []
    first(x)
    assert seen == [1]
    handle.remove()


# ----------------------------------------------------------------------- killed writers (issue #18)
def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_orphans_of_killed_writers_are_removed_live_ones_kept(tmp_path):
    import time

    host = model_artifact._HOST
    dead = tmp_path / f".staging-{host}-{_dead_pid()}-aaaa"
    dead_old = tmp_path / f".old-{host}-{_dead_pid()}-bbbb"
    live = tmp_path / f".staging-{host}-{os.getpid()}-cccc"
    other_host_fresh = tmp_path / ".staging-elsewhere-1-dddd"
    legacy_stale = tmp_path / ".staging-0123456789abcdef0123456789abcdef"
    artifact = tmp_path / "0123456789abcdef"
    for d in (dead, dead_old, live, other_host_fresh, legacy_stale, artifact):
        d.mkdir()
        (d / "weights.pt").write_bytes(b"x" * 100)
    hours_ago = time.time() - 2 * model_artifact.ORPHAN_AGE_S
    os.utime(legacy_stale, (hours_ago, hours_ago))
    removed = model_artifact.remove_orphans(str(tmp_path))
    assert sorted(removed) == sorted(str(d) for d in (dead, dead_old, legacy_stale))
    assert live.exists() and other_host_fresh.exists() and artifact.exists()
    assert model_artifact.remove_orphans(str(tmp_path), now=time.time() + 2 * model_artifact.ORPHAN_AGE_S) == [str(other_host_fresh)]
    assert live.exists() and artifact.exists()  # its writer (this process) is alive, whatever the age


def test_the_next_writer_cleans_what_a_killed_writer_left(tmp_path):
    directory = artifact_dir(str(tmp_path), "0123456789abcdef")
    models = os.path.dirname(directory)
    os.makedirs(models)
    orphan = os.path.join(models, f".staging-{model_artifact._HOST}-{_dead_pid()}-eeee")
    os.mkdir(orphan)
    save_model_artifact(tiny_model(), torch.rand(3, 16, 16), directory)
    assert not os.path.exists(orphan)
    assert sorted(os.listdir(models)) == ["0123456789abcdef"]


def test_program_dataclass_equals_torchs_own_conversion(saved):
    """The read's JSON -> schema conversion (type hints computed once per class) builds exactly torch's dataclasses."""
    from torch._export.serde import serialize as serde

    directory = saved[1]
    with open(os.path.join(directory, model_artifact.PROGRAM_FILE)) as f:
        program = model_artifact.sanitise_program_json(json.load(f))
    ours = model_artifact.program_dataclass(serde, program)
    assert ours is not None and ours == serde._bytes_to_dataclass(serde.ExportedProgram, json.dumps(program).encode("utf-8"))
