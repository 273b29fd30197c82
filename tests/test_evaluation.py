"""The Table 1 protocol: scores against an independent computation, sharding, resume, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tensorboard_plugin_aevis import evaluation
from tensorboard_plugin_aevis.evaluation import EvalConfig, EvalData, EvaluationError
from tensorboard_plugin_aevis.extraction import extract_datapaths
from tensorboard_plugin_aevis.fashion_cnn import FASHION_MNIST_ROOT, FashionCNN, class_subset, load_fashion_mnist, to_tensor, train_fashion_cnn

pytestmark = pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_ROOT), reason="apt-get install dataset-fashion-mnist")
VENV_BIN = os.path.dirname(sys.executable)
CLASSES = 4  # Fashion-MNIST classes 0..3 are the sources of the small dataset below


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained FashionCNN and its weights file."""
    images, labels = load_fashion_mnist(split="train")
    model = FashionCNN()
    train_fashion_cnn(model, images[:6000], labels[:6000], steps=150, batch_size=32, lr=2e-3, seed=0, progress=False)
    path = tmp_path_factory.mktemp("weights") / "fashion.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), str(path)


@pytest.fixture(scope="module")
def small_data():
    images, labels = load_fashion_mnist(split="test")
    keep = labels < CLASSES
    src, src_labels = class_subset(images[keep], labels[keep], per_class=2, seed=1)
    # targets of every class: an adversarial example may fall into any of the 10
    pool, pool_labels = class_subset(images, labels, per_class=12, seed=2)
    return EvalData("small", to_tensor(src), torch.as_tensor(src_labels), to_tensor(pool), torch.as_tensor(pool_labels),
                    [f"c{i}" for i in range(10)], [f"s{i}" for i in range(len(src_labels))])


SMALL = dict(n_targets=4, eps=0.15, stability_every=3, extraction_params={"constrained": {"steps": 25}, "dgr": {"steps": 15}})


# ----------------------------------------------------------------------------- pure scores


def test_top_k_counts_sorts_by_similarity():
    # nearest first: target 1 (0.5), target 3 (1.0), target 0 (2.0), target 2 (3.0)
    counts = evaluation.top_k_counts([2.0, 0.5, 3.0, 1.0], [True, False, True, True], ks=(1, 2, 3, 5))
    assert counts == {1: 0, 2: 1, 3: 2, 5: 3}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10, allow_nan=False), st.booleans()), min_size=1, max_size=25), st.integers(1, 30))
def test_top_k_counts_matches_brute_force(pairs, k):
    distances, detected = zip(*pairs)
    nearest = sorted(range(len(pairs)), key=lambda i: (distances[i], i))[:k]
    assert evaluation.top_k_counts(distances, detected, ks=(k,))[k] == sum(detected[i] for i in nearest)


def test_jaccard():
    assert evaluation.jaccard([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(1 / 3)
    assert evaluation.jaccard([0, 0], [0, 0]) == 1.0


def test_r_must_fit_the_layers():
    assert evaluation.resolve_r(None, 5) == 4 and evaluation.resolve_r(None, 31) == 8
    with pytest.raises(EvaluationError, match=r"r=5 .* 5 gated layers .* --r 4"):
        evaluation.resolve_r(5, 5)
    with pytest.raises(EvaluationError, match="positive integer"):
        evaluation.resolve_r(0, 5)


def test_one_class_dataset_is_refused(small_data):
    d = small_data
    one = EvalData("one", d.source_images[:2], torch.zeros(2, dtype=torch.long), d.pool_images[:3],
                   torch.zeros(3, dtype=torch.long), d.class_names, ["a", "b"])
    with pytest.raises(EvaluationError, match="one class .* at least two classes"):
        one.validate()


# ----------------------------------------------------------------------------- protocol


def independent_scores(model, data, record, method, config, r):
    """Re-extract the record's batch and score it with numpy only (Eq. 5, 9, 10 and the top-K rule)."""
    from tensorboard_plugin_aevis.attacks import mi_fgsm

    i = record["index"]
    adv = mi_fgsm(model, data.source_images[i:i + 1], label=data.source_labels[i:i + 1], eps=config.eps)
    targets = data.pool_images[torch.as_tensor(record["target_indices"])]
    images = torch.cat([adv, data.source_images[i:i + 1], targets])
    roles = ["adversarial", "source"] + ["target"] * len(targets)
    a = extract_datapaths(model, images, roles, method=method, **config.extraction_params[method])
    z = a.flat_gates()
    dis = [np.linalg.norm(z[0] - z[t]) for t in range(2, len(roles))]
    detected, detected_rms = [], []
    for t in range(2, len(roles)):
        diff = np.array([np.linalg.norm(g[0] - g[1]) - np.linalg.norm(g[0] - g[t]) for g in a.gates])
        for curve, out in ((diff, detected), (diff / np.sqrt([g.shape[1] for g in a.gates]), detected_rms)):
            rising = all(curve[m] > curve[m - 1] for m in range(len(curve) - r, len(curve)))
            out.append(bool(rising and curve[-1] >= curve.max()))
    order = np.argsort(dis, kind="stable")
    top_rms = {k: int(np.sum(np.array(detected_rms)[order[:k]])) for k in config.top_k}
    return dis, detected, {k: int(np.sum(np.array(detected)[order[:k]])) for k in config.top_k}, a, top_rms


def test_one_process_run_matches_independent_computation(trained, small_data, tmp_path):
    model, _ = trained
    config = EvalConfig(**SMALL)
    evaluation.run_shard(model, small_data, config, str(tmp_path), progress=False)
    header, records = evaluation.load_records(str(tmp_path))
    done = [rec for rec in records if rec["status"] == "done"]
    assert len(done) >= 3, f"too few misclassified examples to test: {[rec['status'] for rec in records]}"
    r = header["r"]
    assert r == 4 and header["num_layers"] == 5
    expected_rms = {"constrained": [], "dgr": []}
    for rec in done[:2]:
        assert data_label(small_data, rec) != rec["adversarial_label"]
        assert all(int(small_data.pool_labels[t]) == rec["adversarial_label"] for t in rec["target_indices"])
        for method in ("constrained", "dgr"):
            dis, detected, top, a, top_rms = independent_scores(model, small_data, rec, method, config, r)
            expected_rms[method].append(top_rms[3])
            row = rec["methods"][method]
            np.testing.assert_allclose(row["distances"], dis, rtol=1e-5, atol=1e-6)
            assert row["detected"] == detected
            assert {int(k): v for k, v in row["top_k"].items()} == top
            assert row["label_preserved"] == [e.label_preserved for e in a.examples]
    summary = evaluation.reduce_results(str(tmp_path))
    for method in ("constrained", "dgr"):
        expected = np.mean([rec["methods"][method]["top_k"]["3"] for rec in done])
        assert summary["methods"][method]["top_k"]["3"] == pytest.approx(expected)
    # the width-normalised sensitivity row (Eq. 9 with L2 / sqrt(C_l)), on the first two sources alone
    two = evaluation.summarize(header, [rec for rec in records if rec["status"] == "done"][:2])
    for method in ("constrained", "dgr"):
        assert two["r_sensitivity"]["4 (L2/sqrt(C_l))"][method]["3"] == pytest.approx(np.mean(expected_rms[method]))
    assert summary["counts"]["evaluated"] == len(done)
    assert summary["methods"]["constrained"]["stability_order"] is not None
    assert summary["methods"]["dgr"]["stability_order"] is None

    # init stability: mean Jaccard over the pairs of {default start, one run per seed}, both methods
    stable = [rec for rec in done if rec["index"] % config.stability_every == 0]
    assert stable, "no source was sampled for stability"
    rec = stable[0]
    seeds = evaluation.init_seeds(config.seed, rec["index"], config.init_seeds)
    assert len(set(seeds)) == config.init_seeds == 2
    for method in ("constrained", "dgr"):
        runs = [independent_binary(model, small_data, rec, method, config, {})]
        runs += [independent_binary(model, small_data, rec, method, config, dict(init_noise=config.init_noise, seed=s)) for s in seeds]
        pairs = [(0, 1), (0, 2), (1, 2)]
        expected = np.mean([np.mean([(x & y).sum() / max((x | y).sum(), 1) for x, y in zip(runs[i], runs[j])]) for i, j in pairs])
        assert rec["methods"][method]["stability_init"] == pytest.approx(expected)
        assert summary["methods"][method]["stability_init"] == pytest.approx(
            np.mean([r["methods"][method]["stability_init"] for r in stable]))
    # the perturbed starts do change some datapath (else the measure would not test anything)
    assert min(r["methods"][m]["stability_init"] for r in stable for m in ("constrained", "dgr")) < 1


def independent_binary(model, data, rec, method, config, extra):
    """(N, G) boolean datapaths of the record's batch [adversarial, source, targets], extracted directly."""
    from tensorboard_plugin_aevis.attacks import mi_fgsm

    i = rec["index"]
    adv = mi_fgsm(model, data.source_images[i:i + 1], label=data.source_labels[i:i + 1], eps=config.eps)
    images = torch.cat([adv, data.source_images[i:i + 1], data.pool_images[torch.as_tensor(rec["target_indices"])]])
    roles = ["adversarial", "source"] + ["target"] * len(rec["target_indices"])
    a = extract_datapaths(model, images, roles, method=method, **config.extraction_params[method], **extra)
    return np.concatenate(a.binary(), axis=1).astype(bool)


def data_label(data, rec):
    return int(data.source_labels[rec["index"]])


def test_shards_merge_to_the_one_process_table_and_resume_skips_finished_sources(trained, small_data, tmp_path):
    model, _ = trained
    config = EvalConfig(**SMALL, max_sources=5)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    evaluation.run_shard(model, small_data, config, one, progress=False)
    for rank in (1, 0):
        evaluation.run_shard(model, small_data, config, two, rank=rank, world_size=2, progress=False)
    assert evaluation.load_records(one)[1] == evaluation.load_records(two)[1]
    assert evaluation.markdown_table(evaluation.reduce_results(one)) == evaluation.markdown_table(evaluation.reduce_results(two))

    # crash: keep the header and one record, then half a line; the restart redoes only the rest
    path = os.path.join(one, "rank-0", evaluation.RESULTS_FILE)
    lines = open(path).read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    calls = []
    real = evaluation.make_extractor(config, small_data.class_names)

    def counting(model_, images, roles, method, **extra):
        calls.append(method)
        return real(model_, images, roles, method, **extra)

    evaluation.run_shard(model, small_data, config, one, extract=counting, progress=False)
    restarted = evaluation.load_records(one)[1]
    assert restarted == evaluation.load_records(two)[1]
    kept = json.loads(lines[1])["index"]
    redone = [rec for rec in restarted if rec["index"] != kept and rec["status"] == "done"]
    # two methods per source; every 3rd source adds the chain-order run (constrained) and two perturbed starts per
    # method; none for the kept one
    assert len(calls) == sum(2 + 5 * (rec["index"] % 3 == 0) for rec in redone)


def test_results_of_other_settings_are_not_mixed(trained, small_data, tmp_path):
    model, _ = trained
    evaluation.run_shard(model, small_data, EvalConfig(**SMALL, max_sources=1), str(tmp_path), progress=False)
    with pytest.raises(EvaluationError, match="other settings.*new --logdir"):
        evaluation.run_shard(model, small_data, EvalConfig(**dict(SMALL, n_targets=3), max_sources=1), str(tmp_path), progress=False)


def test_summary_is_logged_to_tensorboard(trained, small_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, _ = trained
    evaluation.run_shard(model, small_data, EvalConfig(**SMALL, max_sources=4), str(tmp_path), progress=False)
    summary = evaluation.reduce_results(str(tmp_path))
    acc = EventAccumulator(str(tmp_path / evaluation.SUMMARY_RUN), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    for method in ("constrained", "dgr"):
        for k in ("1", "3", "5"):
            (event,) = acc.Scalars(f"evaluation/{method}/top_{k}")
            assert event.value == pytest.approx(summary["methods"][method]["top_k"][k])
        (event,) = acc.Scalars(f"evaluation/{method}/stability_init")
        assert event.value == pytest.approx(summary["methods"][method]["stability_init"])
    (text,) = acc.Tensors("evaluation/table/text_summary")
    assert "| top-1 | constrained |" in text.tensor_proto.string_val[0].decode()
    assert json.load(open(tmp_path / "results.json"))["counts"] == summary["counts"]


def test_bad_init_stability_settings_are_refused(trained, small_data, tmp_path):
    model, _ = trained
    with pytest.raises(EvaluationError, match="0 < init_noise < 1.*--init-seeds 0"):
        evaluation.run_shard(model, small_data, EvalConfig(**SMALL, init_noise=1.0), str(tmp_path), progress=False)


def test_no_misclassified_example_is_a_clear_error(trained, small_data, tmp_path):
    model, _ = trained
    config = EvalConfig(**dict(SMALL, eps=1e-4), attack_steps=1, max_sources=3)
    evaluation.run_shard(model, small_data, config, str(tmp_path), progress=False)
    with pytest.raises(EvaluationError, match="none of the adversarial examples was misclassified; raise --eps"):
        evaluation.reduce_results(str(tmp_path))


# ----------------------------------------------------------------------------- CLI and torchrun


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Fashion-MNIST test images as PNG files in <root>/c<label>/ (folder order = label), all 10 classes."""
    root = tmp_path_factory.mktemp("folder")
    sub, sub_labels = class_subset(*load_fashion_mnist(split="test"), per_class=4, seed=4)
    for n, (image, label) in enumerate(zip(sub, sub_labels)):
        os.makedirs(root / f"c{label}", exist_ok=True)
        Image.fromarray(image).save(root / f"c{label}" / f"{n:03d}.png")
    return str(root)


def cli(*args, torchrun=False):
    command = [os.path.join(VENV_BIN, "torchrun"), "--nproc_per_node=2", "-m", "tensorboard_plugin_aevis.evaluation"] \
        if torchrun else [sys.executable, "-m", "tensorboard_plugin_aevis", "evaluate"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=600, env=env)


def folder_args(image_folder, weights, logdir, *extra):
    return ["--dataset", f"folder:{image_folder}", "--model", "tensorboard_plugin_aevis.fashion_cnn:FashionCNN",
            "--weights", weights, "--image-size", "28", "--targets", "3", "--eps", "0.15", "--max-sources", "6",
            "--stability-every", "0", "--threads", "1", "--no-progress", "--logdir", logdir, *extra]


def test_torchrun_two_processes_give_the_one_process_table(trained, image_folder, tmp_path):
    _, weights = trained
    single = cli(*folder_args(image_folder, weights, str(tmp_path / "single"), "--json"))
    assert single.returncode == 0, single.stderr
    double = cli(*folder_args(image_folder, weights, str(tmp_path / "double"), "--json"), torchrun=True)
    assert double.returncode == 0, double.stderr
    assert sorted(os.listdir(tmp_path / "double")) == ["rank-0", "rank-1", "results.json", "summary"]
    a = json.loads(single.stdout)
    b = json.loads(double.stdout[double.stdout.index("{"):])
    assert a["counts"]["evaluated"] >= 1
    assert a == b


@pytest.mark.parametrize("extra, message", [
    (["--r", "7"], "r=7 is larger than this model allows"),
    (["--eps", "0.0001", "--attack-steps", "1"], "none of the adversarial examples was misclassified"),
    (["--methods", "gradcam"], "--methods 'gradcam'"),
    (["--shard", "2/2"], "need 0 <= i < n"),
    (["--methods", "dgr", "--multiplicative"], "the DGR baseline keeps its own"),
    (["--warmup", "-1"], "--warmup -1"),
])
def test_cli_errors_name_the_problem(trained, image_folder, tmp_path, extra, message):
    _, weights = trained
    result = cli(*folder_args(image_folder, weights, str(tmp_path / "run"), *extra))
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_cli_refuses_a_one_class_folder(trained, tmp_path):
    _, weights = trained
    os.makedirs(tmp_path / "only" / "c0")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "only" / "c0" / "a.png")
    result = cli(*folder_args(str(tmp_path / "only"), weights, str(tmp_path / "run")))
    assert result.returncode == 2 and "1 class folder(s) (c0)" in result.stderr, result.stderr


def test_cli_warmup_and_multiplicative_reach_the_constrained_extraction_only(trained, image_folder, tmp_path):
    """``--warmup 0 --no-multiplicative`` (the former plain Adam, not the default) reaches the constrained
    extraction and is recorded; DGR keeps its own optimiser."""
    from tensorboard_plugin_aevis.commands.evaluate import folder_data

    _, weights = trained
    logdir = str(tmp_path / "run")
    result = cli(*folder_args(image_folder, weights, logdir, "--warmup", "0", "--no-multiplicative"))
    assert result.returncode == 0, result.stderr
    assert "Extraction options: constrained: multiplicative=False, warmup=0." in result.stdout
    header, records = evaluation.load_records(logdir)
    options = {"constrained": {"warmup": 0, "multiplicative": False}}
    assert header["config"]["extraction_params"] == options
    done = [rec for rec in records if rec["status"] == "done"]
    assert done, f"no misclassified example to check: {[rec['status'] for rec in records]}"
    model, data = folder_data(image_folder, "tensorboard_plugin_aevis.fashion_cnn:FashionCNN", weights, 28)
    config = EvalConfig(eps=0.15, n_targets=3, extraction_params={**options, "dgr": {}})
    rec = done[0]
    for method in ("constrained", "dgr"):
        row = rec["methods"][method]
        assert (row["params"]["warmup"], row["params"]["multiplicative"]) == (0, False)
        dis, detected, top, _, _ = independent_scores(model, data, rec, method, config, header["r"])
        np.testing.assert_allclose(row["distances"], dis, rtol=1e-5, atol=1e-6)
        assert row["detected"] == detected


def test_the_fingerprint_holds_the_effective_extraction_options(monkeypatch):
    from tensorboard_plugin_aevis.extraction.methods import Constrained

    plain = EvalConfig()
    assert plain.extraction_options()["constrained"]["warmup"] == 5 and plain.extraction_options()["constrained"]["multiplicative"]
    now = plain.fingerprint("d")
    # options that are the defaults run the same extraction, so they match
    assert now == EvalConfig(extraction_params={"constrained": {"warmup": 5, "multiplicative": True}}).fingerprint("d")
    fingerprints = {EvalConfig(extraction_params={"constrained": options}).fingerprint("d")
                    for options in ({"warmup": 0}, {"warmup": 3}, {"multiplicative": False}, {"warmup": 0, "multiplicative": False})}
    assert len(fingerprints) == 4 and now not in fingerprints
    # another engine default (the former plain Adam) is another fingerprint for the same settings
    monkeypatch.setitem(Constrained.defaults, "warmup", 0)
    monkeypatch.setitem(Constrained.defaults, "multiplicative", False)
    assert EvalConfig().fingerprint("d") != now
    assert EvalConfig().fingerprint("d") == EvalConfig(extraction_params={"constrained": {"warmup": 0, "multiplicative": False}}).fingerprint("d")


def test_a_folder_of_the_former_default_is_not_resumed(trained, small_data, tmp_path):
    """Results written before the constrained default became ``multiplicative=True, warmup=5``: their header
    holds the hash of the settings alone (the previous fingerprint); resuming them is refused."""
    import dataclasses
    import hashlib

    model, _ = trained
    config = EvalConfig(**SMALL, max_sources=1)
    fields = {**dataclasses.asdict(config), "data": small_data.name}
    former = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
    os.makedirs(tmp_path / "rank-0")
    (tmp_path / "rank-0" / evaluation.RESULTS_FILE).write_text(json.dumps({"fingerprint": former, "config": fields}) + "\n")
    with pytest.raises(EvaluationError, match="other settings.*new --logdir"):
        evaluation.run_shard(model, small_data, config, str(tmp_path), progress=False)
