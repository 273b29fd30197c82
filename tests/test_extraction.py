"""Datapath extraction on a small CNN and torchvision resnet18 (random weights)."""

import math

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn

from tensorboard_plugin_aevis.analysis import Analysis
from tensorboard_plugin_aevis.datapath_metrics import datapath_distance
from tensorboard_plugin_aevis.extraction import extract_datapaths
from tensorboard_plugin_aevis.extraction.methods import FIDELITY_MAX_CONFIDENCE

ROLES = ["source", "adversarial", "target", "target"]


class SmallCNN(nn.Module):
    """conv-bn-relu, conv-relu, pool, conv-relu, global pool, linear: (B, C, 24, 24) -> (B, 6)."""

    def __init__(self, in_channels=3, classes=6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(16, classes, bias=False)  # no bias: an empty datapath predicts nothing

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)) * 4.0)


def trained_small_cnn(in_channels=3, seed=0):
    """SmallCNN trained for a few seconds to tell 6 stripe patterns apart; (model, images of classes 1..4)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    coords = torch.arange(24.0)
    stripes = [torch.sin(coords * f)[None, :].expand(24, 24) for f in (0.4, 1.2, 2.4)]
    stripes = stripes + [s.T for s in stripes]  # 3 frequencies x 2 orientations = 6 classes
    colour = torch.rand(6, in_channels, 1, 1, generator=gen)
    templates = 0.5 + 0.5 * torch.stack(stripes)[:, None] * colour

    def sample(labels):
        noise = torch.rand(len(labels), in_channels, 24, 24, generator=gen)
        return 0.6 * templates[labels] + 0.4 * noise

    model = SmallCNN(in_channels)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        labels = torch.randint(0, 6, (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(sample(labels)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval(), sample(torch.tensor([1, 2, 3, 4]))


@pytest.fixture(scope="module")
def small():
    return trained_small_cnn()


@pytest.fixture(scope="module")
def small_analysis(small):
    model, images = small
    return extract_datapaths(model, images, ROLES, ["cat", "cat (adv)", "dog 1", "dog 2"], steps=80)


def test_labels_kept_gates_in_range_and_datapaths_sparse(small, small_analysis):
    model, images = small
    a = small_analysis
    with torch.no_grad():
        labels = model(images).argmax(dim=1).tolist()
    assert [e.label for e in a.examples] == labels
    for e in a.examples:
        assert e.gated_label == e.label and e.binary_label == e.label, e
        assert e.loss_history and all(np.isfinite(e.loss_history))
    assert all(((g >= 0) & (g <= 1)).all() for g in a.gates)
    assert [l.name for l in a.layers] == ["features.2", "features.4", "features.7"]
    assert [l.channels for l in a.layers] == [8, 16, 16]
    assert (a.kept_fraction() < 0.9).all()  # the L1 term removed feature maps
    assert a.method == "constrained" and a.threshold == 0.5
    # the contract of the fidelity temperature: an example is refit at T > 1 only when it is saturated
    for e, t in zip(a.examples, a.params["fidelity_temperature"]):
        assert t == 1.0 or (e.confidence > FIDELITY_MAX_CONFIDENCE and t > 1.0), (e.name, e.confidence, t)
    assert a.params["order"] == [[1], [0], [2, 3]]  # adversarial, source, then the targets batched


def labels_by_hand(model, images, masks):
    """SmallCNN's labels (N,) with per-layer masks (N, C_l) multiplied on features.2, .4 and .7 by hand."""
    masks = [torch.as_tensor(np.asarray(m, dtype=np.float32))[:, :, None, None] for m in masks]
    with torch.no_grad():
        h = model.features[2](model.features[1](model.features[0](images))) * masks[0]
        h = model.features[4](model.features[3](h)) * masks[1]
        h = model.features[7](model.features[6](model.features[5](h))) * masks[2]
        return model.fc(h.mean(dim=(2, 3)) * 4.0).argmax(dim=1)


def test_binary_labels_match_an_independent_gated_forward(small, small_analysis):
    """Re-run the network with the binary datapath applied by hand."""
    model, images = small
    a = small_analysis
    assert labels_by_hand(model, images, a.binary()).tolist() == [e.binary_label for e in a.examples]


def test_label_repair_keeps_every_binarised_label_with_a_minimal_top_k(small, tmp_path):
    """Four steps with a strong L1 term and threshold 0.9: no checked iterate keeps the binarised label,
    so the engine lowers each such example's threshold to the smallest top-k datapath that keeps it."""
    model, images = small
    a = extract_datapaths(model, images, ROLES, steps=4, lambda_=20.0, lr=0.3, threshold=0.9)
    labels = [e.label for e in a.examples]
    at_global = labels_by_hand(model, images, [g > a.threshold for g in a.gates]).tolist()
    repaired = [i for i, e in enumerate(a.examples) if e.threshold is not None]
    assert repaired == [i for i in range(4) if at_global[i] != labels[i]] and len(repaired) >= 2
    assert labels_by_hand(model, images, a.binary()).tolist() == labels == [e.binary_label for e in a.examples]
    assert all(e.gated_label == e.label for e in a.examples)
    flat = a.flat_gates()
    for i in repaired:
        t = a.examples[i].threshold
        assert t < a.threshold
        kept = flat[i] > t
        smallest_kept = flat[i][kept].min()
        # one step smaller along the sorted gates (drop the smallest kept value): the label is lost
        smaller = flat[i] > smallest_kept
        split = np.split(smaller, np.cumsum([l.channels for l in a.layers])[:-1])
        masks = [np.repeat(m[None], 4, axis=0) for m in split]
        assert labels_by_hand(model, images, masks)[i] != labels[i]
    assert np.isclose(a.kept_fraction(), [np.mean(flat[i] > t) for i, t in enumerate(a.thresholds())]).all()
    path = str(tmp_path / "r.npz")
    a.save_npz(path)
    b = Analysis.load_npz(path)
    assert [e.threshold for e in b.examples] == [e.threshold for e in a.examples]
    for x, y in zip(a.binary(), b.binary()):
        np.testing.assert_array_equal(x, y)


def test_activations_are_the_ungated_feature_maps(small, small_analysis):
    model, images = small
    with torch.no_grad():
        first = model.features[:3](images)
    np.testing.assert_allclose(small_analysis.activation_maps[0], first.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(small_analysis.max_activations[0], first.amax(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    probs = torch.softmax(model(images), dim=1).max(dim=1).values
    np.testing.assert_allclose([e.confidence for e in small_analysis.examples], probs.detach().numpy(), rtol=1e-5)


def test_model_left_exactly_as_it_was(small):
    model, images = small
    model.train()  # a user's model may be in training mode; extraction must restore it
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    with torch.no_grad():
        before = model(images)
    model.train()
    extract_datapaths(model, images, ROLES, steps=5)
    assert model.training and all(m.training for m in model.modules())
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        after = model(images)
    assert torch.equal(before, after)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_batched_targets_equal_one_by_one(small):
    model, images = small
    batched = extract_datapaths(model, images, ROLES, steps=40)
    for k in (2, 3):
        single = extract_datapaths(model, images[[0, 1, k]], ["source", "adversarial", "target"], steps=40)
        for gb, gs in zip(batched.gates, single.gates):
            np.testing.assert_allclose(gb[k], gs[2], atol=2e-3)
        assert batched.examples[k].loss_history == pytest.approx(single.examples[2].loss_history, rel=1e-3, abs=1e-5)


def test_constraint_pulls_datapaths_together(small):
    model, images = small
    free = extract_datapaths(model, images, ROLES, steps=60, gamma=0.0)
    tied = extract_datapaths(model, images, ROLES, steps=60, gamma=2.0)
    for i, j in [(0, 1), (2, 1), (3, 1)]:
        assert datapath_distance(tied, i, j) < datapath_distance(free, i, j)
    # the adversarial example comes first in the chain: no constraint acts on it
    for gf, gt in zip(free.gates, tied.gates):
        np.testing.assert_array_equal(gf[1], gt[1])


def test_fidelity_temperature_caps_the_confidence_at_0_95():
    from tensorboard_plugin_aevis.extraction import FIDELITY_MAX_CONFIDENCE, fidelity_temperatures

    logits = torch.tensor([[0.0, 1.0, 0.5], [12.0, 0.0, -3.0], [0.0, 0.0, 40.0], [2.0, 2.0, 2.0]])
    t = fidelity_temperatures(logits)
    confidence = torch.softmax(logits, dim=1).amax(dim=1)
    assert confidence[0] < 0.95 and confidence[1] > 0.95 and confidence[2] > 0.95
    assert t[0] == 1.0 and t[3] == 1.0  # unsure predictions: Eq. 5 as written
    tempered = torch.softmax(logits / t[:, None], dim=1)
    np.testing.assert_allclose(tempered[1:3].amax(dim=1).numpy(), FIDELITY_MAX_CONFIDENCE, atol=1e-5)
    assert torch.equal(tempered.argmax(dim=1)[:3], logits.argmax(dim=1)[:3])
    # the sigmoid of the margin for two classes: 0.95 at margin / T = log(19)
    two = fidelity_temperatures(torch.tensor([[0.0, 9.0]]))
    assert float(two[0]) == pytest.approx(9.0 / np.log(19.0), rel=1e-5)


def test_fidelity_temperature_refits_only_examples_whose_fit_returned_the_whole_network(small, monkeypatch):
    """Three steps at lr 1 lose the label of (some or all, depending on the thread count) of the four
    confident examples at T = 1: the whole network is returned for them. Exactly those are fitted again
    at their temperature; one batch of targets (no chain), so any other keeps its T = 1 datapath exactly."""
    from tensorboard_plugin_aevis.extraction import methods

    model, images = small
    kwargs = dict(steps=3, lr=1.0, lambda_=5.0)
    roles = ["target"] * 4
    monkeypatch.setattr(methods.Constrained, "refits_whole_plainly", False)  # the temperature alone (plain refit: below)
    with monkeypatch.context() as m:
        m.setattr(methods, "FIDELITY_MAX_CONFIDENCE", 1.0)  # no temperature anywhere
        plain = extract_datapaths(model, images, roles, **kwargs)
    a = extract_datapaths(model, images, roles, **kwargs)
    whole = (plain.flat_gates() == 1).all(axis=1)
    assert plain.params["fidelity_temperature"] == [1.0] * 4 and whole.any()
    assert all(e.confidence > 0.95 for e in a.examples)
    assert [t > 1 for t in a.params["fidelity_temperature"]] == whole.tolist()
    assert a.params["discarded_steps"] == [len(e.loss_history) if w else 0 for e, w in zip(plain.examples, whole)]
    assert a.params["fit_steps"] == [{"fit": len(p.loss_history), "tempered": len(e.loss_history) if w else None, "plain": None}
                                     for p, e, w in zip(plain.examples, a.examples, whole)]
    for i in np.nonzero(~whole)[0]:
        np.testing.assert_array_equal(a.flat_gates()[i], plain.flat_gates()[i])
    assert all(e.gated_label == e.label and e.binary_label == e.label for e in a.examples)


class _MarginCNN(nn.Module):
    """The trained SmallCNN plus a constant logit for class 0, set so that class 0 trails the label of
    ``image`` by 0.1: shrinking the gates (the default's warm-up, where the L1 term leads) hands the
    label to class 0, a low-confidence example (p ~ 0.5) like the photo targets of docs/method.md."""

    def __init__(self, net, image):
        super().__init__()
        self.net = net
        with torch.no_grad():
            logits = net(image[None])[0]
        bias = torch.zeros_like(logits)
        bias[0] = float(logits.max() - logits[0]) - 0.1
        self.register_buffer("bias", bias)

    def forward(self, x):
        return self.net(x) + self.bias


def _every_map(analysis):
    return analysis.kept_fraction() == 1.0


def _margin_fits(small, monkeypatch, plain_keeps):
    """The first image of ``small`` whose margin problem (:class:`_MarginCNN`, 30 steps) the default fit
    ends with every map and plain Adam ends with a sparse datapath (``plain_keeps``) or with every map too:
    which images do depends on the CPU's rounding (the small CNN is trained in the test run).

    Returns:
        (margin model, image (1, C, H, W), the default fit without the refit, plain Adam's fit).
    """
    from tensorboard_plugin_aevis.extraction import methods

    model, images = small
    for index in range(len(images)):
        margin = _MarginCNN(model, images[index]).eval()
        x = images[index:index + 1]
        with monkeypatch.context() as m:
            m.setattr(methods.Constrained, "refits_whole_plainly", False)
            first = extract_datapaths(margin, x, ["target"], steps=30)
        if not _every_map(first)[0]:
            continue
        plain = extract_datapaths(margin, x, ["target"], warmup=0, multiplicative=False, steps=30)
        if bool(_every_map(plain)[0]) != plain_keeps:
            return margin, x, first, plain
    pytest.fail(f"no image of the small CNN gives the margin problem whose plain Adam fit {'is sparse' if plain_keeps else 'holds every map'}")


@pytest.mark.parametrize("plain_keeps", [True, False])
def test_plain_refit_of_a_datapath_that_holds_every_map(small, monkeypatch, plain_keeps):
    """A margin problem whose default fit (warm-up, multiplicative step) ends with every map: where plain
    Adam (``warmup=0, multiplicative=False``) ends with a sparse datapath, the refit's datapath is
    returned, exactly plain Adam's (one row, no anchors), and the default fit's steps are discarded;
    where plain Adam ends with every map too, the default fit's datapath is returned and the refit's
    steps are discarded. Both are recorded in ``params["plain_refit"]`` and ``params["fit_steps"]``."""
    margin, x, first, plain = _margin_fits(small, monkeypatch, plain_keeps)
    a = extract_datapaths(margin, x, ["target"], steps=30)
    assert 0.5 < a.examples[0].confidence < 0.6
    assert first.params["plain_refit"] == [None] and plain.params["plain_refit"] == [None]  # plain Adam: no refit
    assert a.params["warmup"] == 5 and a.params["multiplicative"] is True  # the options asked for, as recorded
    kept_fit, dropped_fit = (plain, first) if plain_keeps else (first, plain)
    assert a.params["plain_refit"] == ["used" if plain_keeps else "whole"]
    np.testing.assert_array_equal(a.flat_gates(), kept_fit.flat_gates())
    assert a.examples[0].threshold == kept_fit.examples[0].threshold
    assert a.examples[0].loss_history == kept_fit.examples[0].loss_history
    assert a.params["steps_run"] == kept_fit.params["steps_run"]
    assert a.params["discarded_steps"] == [len(dropped_fit.examples[0].loss_history)]
    assert a.params["fit_steps"] == [{"fit": len(first.examples[0].loss_history), "tempered": None,
                                      "plain": len(plain.examples[0].loss_history)}]
    assert a.examples[0].binary_label == a.examples[0].label
    assert bool(_every_map(a)[0]) != plain_keeps


def test_plain_refit_leaves_other_rows_and_dgr_alone(small, small_analysis):
    """No datapath of the small triplet holds every map: nothing is refitted. Three steps leave every
    gate above 0.5 (every map) with every label kept: an unfinished fit, not a failed one, so not
    refitted either. DGR is never refitted."""
    model, images = small
    assert not (small_analysis.kept_fraction() == 1.0).any()
    assert small_analysis.params["plain_refit"] == [None] * 4
    assert small_analysis.params["discarded_steps"] == [0] * 4
    assert [f["tempered"] or f["plain"] for f in small_analysis.params["fit_steps"]] == [None] * 4
    short = extract_datapaths(model, images, ROLES, steps=3)
    assert (short.kept_fraction() == 1.0).all() and all(e.gated_label == e.label for e in short.examples)
    assert short.params["plain_refit"] == [None] * 4 and short.params["discarded_steps"] == [0] * 4
    dgr = extract_datapaths(model, images, ROLES, method="dgr", steps=5)
    assert dgr.params["plain_refit"] == [None] * 4


def test_init_noise_zero_is_the_default_and_seeds_perturb_the_start(small):
    model, images = small
    default = extract_datapaths(model, images, ROLES, steps=30)
    zero = extract_datapaths(model, images, ROLES, steps=30, init_noise=0.0, seed=5)
    for g, h in zip(default.gates, zero.gates):
        np.testing.assert_array_equal(g, h)
    assert [e.loss_history for e in default.examples] == [e.loss_history for e in zero.examples]
    runs = [extract_datapaths(model, images, ROLES, steps=30, init_noise=0.5, seed=s) for s in (1, 2, 1)]
    assert runs[0].params["init_noise"] == 0.5 and runs[0].params["seed"] == 1 and zero.params["init_noise"] == 0.0
    for g, h in zip(runs[0].gates, runs[2].gates):  # the same seed: the same result
        np.testing.assert_array_equal(g, h)
    assert any(not np.array_equal(g, h) for g, h in zip(runs[0].gates, runs[1].gates))
    for a in runs:
        assert all(e.gated_label == e.label and e.binary_label == e.label for e in a.examples)
        assert all(((g >= 0) & (g <= 1)).all() for g in a.gates)
    # the first loss is that of the start: 1 - 0.5 U(0, 1) has mean gate ~0.75, below the default start's 1
    assert runs[0].examples[1].loss_history[0] != default.examples[1].loss_history[0]
    with pytest.raises(ValueError, match=r"init_noise must be a number in \[0, 1\)"):
        extract_datapaths(model, images, ROLES, steps=2, init_noise=1.0)
    with pytest.raises(TypeError, match="seed must be an integer"):
        extract_datapaths(model, images, ROLES, steps=2, init_noise=0.1, seed="x")


def test_dgr_baseline_on_resnet18():
    torch.manual_seed(1)
    model = tvm.resnet18(num_classes=10).eval()
    images = torch.rand(3, 3, 48, 48)
    a = extract_datapaths(model, images, ["source", "adversarial", "target"], method="dgr", steps=8)
    assert a.method == "dgr" and a.threshold == 0.0
    assert a.params["clamp"] == [0.0, 100.0] and a.params["lambda"] == 0.05 and a.params["lr"] == 0.1
    assert a.params["order"] == [[0, 1, 2]]  # no chain: every example on its own, one batch
    assert [l.name for l in a.layers][:2] == ["relu", "layer1.0"] and len(a.layers) == 9
    assert all(((g >= 0) & (g <= 100)).all() for g in a.gates)
    assert all(e.label_preserved for e in a.examples)
    assert all(len(e.loss_history) == 8 for e in a.examples)


def test_dgr_clamps_plain_networks_to_five(small):
    model, images = small
    a = extract_datapaths(model, images, ROLES, method="dgr", steps=3)
    assert a.params["clamp"] == [0.0, 5.0]


def test_resnet18_triplet_keeps_labels_and_round_trips(tmp_path):
    torch.manual_seed(2)
    model = tvm.resnet18(num_classes=10).eval()
    images = torch.rand(3, 3, 48, 48)
    a = extract_datapaths(model, images, ["source", "adversarial", "target"], names=["s", "a", "t"], steps=30,
                          class_names=[f"c{k}" for k in range(10)])
    assert all(e.label_preserved for e in a.examples)
    assert all(e.class_name == f"c{e.label}" for e in a.examples)
    assert [l.channels for l in a.layers] == [64, 64, 64, 128, 128, 256, 256, 512, 512]
    path = str(tmp_path / "a.npz")
    a.save_npz(path)
    b = Analysis.load_npz(path)
    assert b.to_json() == a.to_json()
    for g, h in zip(a.gates, b.gates):
        np.testing.assert_array_equal(g, h)


def test_grey_scale_model():
    model, images = trained_small_cnn(in_channels=1, seed=3)
    a = extract_datapaths(model, images[:2], ["source", "adversarial"], steps=10)
    assert a.images.shape == (2, 1, 24, 24) and all(e.label_preserved for e in a.examples)


class NoFeatureMaps(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 24 * 24, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


class ReturnsTuple(SmallCNN):
    def forward(self, x):
        return super().forward(x), x


@pytest.mark.parametrize(
    "make_args, error, pattern",
    [
        (lambda m, x: (m, x.clone().fill_(float("nan")), ROLES), ValueError, "NaN or infinite"),
        (lambda m, x: (m, x * 255, ROLES), ValueError, r"not \[0, 1\]"),
        (lambda m, x: (m, x[:, :1], ROLES), ValueError, "1 channels but the model takes 3"),
        (lambda m, x: (m, x, ROLES[:3]), ValueError, "3 roles for 4 images"),
        (lambda m, x: (m, x, ["source", "adv", "target", "target"]), ValueError, "role 'adv' of image 1 is unknown"),
        (lambda m, x: (m, x[0], ROLES[:1]), ValueError, "add the batch dimension"),
        (lambda m, x: (NoFeatureMaps(), x, ROLES), ValueError, "no 4-D feature maps"),
        (lambda m, x: (ReturnsTuple().eval(), x, ROLES), ValueError, "not logits of shape"),
    ],
)
def test_bad_input_errors(small, make_args, error, pattern):
    model, images = small
    with pytest.raises(error, match=pattern):
        extract_datapaths(*make_args(model, images), steps=2)


def test_bad_options_errors(small):
    model, images = small
    with pytest.raises(ValueError, match=r"no module named 'features\.22'.*features\.2"):
        extract_datapaths(model, images, ROLES, layers=["features.22"], steps=2)
    with pytest.raises(ValueError, match="every example exactly once"):
        extract_datapaths(model, images, ROLES, order=["adversarial", "source"], steps=2)
    with pytest.raises(ValueError, match="unknown method"):
        extract_datapaths(model, images, ROLES, method="lasso")
    with pytest.raises(ValueError, match="threshold must be in"):
        extract_datapaths(model, images, ROLES, threshold=1.0)
    with pytest.raises(ValueError, match="warmup must be an integer >= 0"):
        extract_datapaths(model, images, ROLES, warmup=-1)
    with pytest.raises(TypeError, match="multiplicative must be True, False or None"):
        extract_datapaths(model, images, ROLES, multiplicative="yes")


def test_wrong_image_size_for_a_wrapped_model(small):
    from tensorboard_plugin_aevis.models import ClassifierWrapper

    model, images = small
    wrapped = ClassifierWrapper(model, [0.5] * 3, [0.5] * 3, input_size=(32, 32)).eval()
    with pytest.raises(ValueError, match="24x24 pixels but the model expects 32x32"):
        extract_datapaths(wrapped, images, ROLES, steps=2)


# ------------------------------------------------------------------ the optimiser and K starts


def test_constrained_step_is_adam_and_dgr_step_is_sgd_with_momentum():
    """The methods' steps against torch.optim on the same gradients (float32: agreement to rounding)."""
    from tensorboard_plugin_aevis.extraction import DGR, Constrained

    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 7, generator=gen) * 10.0 ** float(k - 3) for k in range(6)]
    for method, optimiser in ((Constrained(), lambda p: torch.optim.Adam([p], lr=0.1, betas=Constrained.betas, eps=Constrained.eps)),
                              (DGR(), lambda p: torch.optim.SGD([p], lr=0.1, momentum=DGR.momentum))):
        z = torch.zeros(3, 7)
        state = method.init_state(z)
        param = torch.nn.Parameter(torch.zeros(3, 7))
        opt = optimiser(param)
        for t, g in enumerate(grads, start=1):
            before = param.detach().clone()
            param.grad = g.clone()
            opt.step()
            np.testing.assert_allclose(method.step(g, state, t, 0.1).numpy(), (before - param.detach()).numpy(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("multiplicative", [False, True])
def test_fidelity_warmup_and_multiplicative_steps_follow_their_update_rule(small, multiplicative):
    """With ``warmup=W`` the fit's iterates take Adam's step ``s`` on Eq. 5 with the fidelity's gradient
    weighted by t / W at steps t < W, then a fresh Adam (new moments, bias correction from 1); the step is
    applied as ``z - s`` or, with ``multiplicative``, as ``z exp(-s)``, then clamped to [0, 1]; the
    losses recorded are Eq. 5's values. Checked against torch.optim.Adam fed the two terms' separate
    gradients (float32: agreement to rounding)."""
    from tensorboard_plugin_aevis.extraction import Constrained, ExtractionOptions
    from tensorboard_plugin_aevis.extraction.fit import GateFit
    from tensorboard_plugin_aevis.gating import GateHooks

    model, images = small
    x, warmup, steps, noise = images[1:2], 3, 7, 0.1
    options = ExtractionOptions(steps=steps, warmup=warmup, init_noise=noise, multiplicative=multiplicative)
    options = options.with_defaults(Constrained.defaults)
    sizes = [8, 16, 16]
    n = sum(sizes)
    with GateHooks(model, ["features.2", "features.4", "features.7"]) as hooks:
        fit = GateFit(model, hooks, sizes, Constrained(), options, 1.0, torch.Generator().manual_seed(5))
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)
        result = fit.run(x, probs, torch.ones(1), probs.argmax(dim=1), torch.zeros(0, n), torch.tensor([noise]), None)

        z = (1.0 - noise * torch.rand(1, n, generator=torch.Generator().manual_seed(5))).requires_grad_(True)
        shadow = torch.nn.Parameter(torch.zeros(1, n))  # Adam's step s = shadow before - after (no weight decay)
        expected = []
        for t in range(steps):
            if t in (0, warmup):
                opt = torch.optim.Adam([shadow], lr=options.lr, betas=Constrained.betas, eps=Constrained.eps)
            with torch.enable_grad():
                fidelity = ((torch.softmax(fit.forward(x, z), dim=1) - probs) ** 2).sum()
                penalty = options.lambda_ * (probs**2).sum() * z.abs().sum() / n
                (g_fidelity,) = torch.autograd.grad(fidelity, z)
                (g_penalty,) = torch.autograd.grad(penalty, z)
            expected.append(float((fidelity + penalty).detach()))
            before = shadow.detach().clone()
            shadow.grad = min(1.0, t / warmup) * g_fidelity + g_penalty
            opt.step()
            s = before - shadow.detach()
            with torch.no_grad():
                z = (z * torch.exp(-s) if multiplicative else z - s).clamp(0.0, 1.0).requires_grad_(True)
    np.testing.assert_allclose(result["histories"][0], expected, rtol=1e-4)


class _BoxL1(nn.Module):
    """A 1x1 conv of 6 channels whose gated output never changes the label (the classifier has zero weights)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 1)
        self.fc = nn.Linear(6, 2)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([5.0, 0.0]))

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("multiplicative", [False, True])
@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_fit_loop_reaches_the_known_minimiser_of_a_convex_box_l1_problem(noise, multiplicative):
    """With the loss ||z - a||^2 + c * sum(z) on [0, 1]^n (strictly convex, minimiser clip(a - c/2, 0, 1)),
    the shared fit loop with Adam's step (the former plain Adam: additive, no warm-up; or the default:
    multiplicative, ``z exp(-s)``, after the 5-step warm-up), the box clamp and the stopping rule ends near
    that minimiser from the default and from a perturbed start. Tolerance: the loop stops when the loss moved
    by <= 1e-3 of itself over 10 steps; on this quadratic that leaves the iterate within a few Adam steps
    (each at most lr (1 - beta1) / sqrt(1 - beta2) ~ 3.2 lr; a multiplicative step moves z <= 1 by at most
    as much) of the minimiser: 5 lr. Exception: a multiplicative step never reaches 0, it shrinks such a
    gate geometrically (by about exp(-lr) per step), so where the minimiser is 0 the gate stays positive and
    its excess loss z^2 + z (c - 2a) >= z^2 is at most the geometric tail left when the loss falls by
    1e-3 L per 10 steps, about 1e-3 L / (10 lr): z <= sqrt(1e-3 L / (10 lr)) (L the minimal loss)."""
    from tensorboard_plugin_aevis.extraction import Constrained, ExtractionOptions
    from tensorboard_plugin_aevis.extraction.fit import GateFit
    from tensorboard_plugin_aevis.gating import GateHooks

    a = torch.tensor([[-0.3, 0.1, 0.35, 0.6, 0.9, 1.4]])
    c = 0.2
    target = (a - c / 2).clamp(0, 1)

    class Quadratic(Constrained):
        def loss(self, logits, clean_probs, temperatures, z, anchors, options, weight=1.0):
            return ((z - a) ** 2).sum(dim=1) + c * z.sum(dim=1) + 0.0 * logits.sum(dim=1)

    model = _BoxL1().eval()
    x = torch.rand(1, 1, 4, 4)
    lr = 0.01
    former = {} if multiplicative else {"warmup": 0, "multiplicative": False}
    options = ExtractionOptions(steps=5000, lr=lr, **former).with_defaults(Constrained.defaults)
    assert (options.warmup, options.multiplicative) == ((5, True) if multiplicative else (0, False))
    with GateHooks(model, ["conv"]) as hooks:
        fit = GateFit(model, hooks, [6], Quadratic(), options, 1.0, torch.Generator().manual_seed(3))
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)
        result = fit.run(x, probs, torch.ones(1), probs.argmax(dim=1), torch.zeros(0, 6), torch.tensor([noise]), None)
    assert len(result["histories"][0]) < 5000  # stopped on convergence
    optimum = float(((target - a) ** 2).sum() + c * target.sum())
    gates = result["gates"].numpy()
    zero = (target == 0).numpy()
    if multiplicative:
        assert (gates[zero] > 0).all() and (gates[zero] <= math.sqrt(1e-3 * optimum / (10 * lr))).all(), gates
        np.testing.assert_allclose(gates[~zero], target.numpy()[~zero], atol=5 * lr)
    else:
        np.testing.assert_allclose(gates, target.numpy(), atol=5 * lr)
    assert result["loss"][0] >= optimum - 1e-6  # no iterate beats the minimiser


def test_fit_never_stops_while_the_binary_datapath_changes():
    """The stop rule's guarantee on a constructed problem whose answer is known without the engine.
    Every row's Eq. 5 value is held constant (value c, gradient g: the loss rule alone would stop every row
    after its first 11 steps). Row 0 has g = 0: nothing moves, so it must stop after exactly
    CONVERGENCE_WINDOW + 1 steps. Row 1's first gate has g = sign(z - threshold): Adam (additive, lr 0.1)
    drives it to the threshold and, with momentum, back and forth across it for as long as it runs, so its
    binary datapath keeps changing and it must run to the step limit. Then, from the recorded iterates
    (the z each loss call received), independently: every row that stopped early had the same binary
    datapath at each of its last CONVERGENCE_WINDOW + 1 steps, and row 1's datapath did change inside
    every window of its run after the gate first reached the threshold."""
    from tensorboard_plugin_aevis.extraction import Constrained, ExtractionOptions
    from tensorboard_plugin_aevis.extraction.fit import CONVERGENCE_WINDOW, GateFit
    from tensorboard_plugin_aevis.gating import GateHooks

    iterates = []

    class ConstantValue(Constrained):
        def loss(self, logits, clean_probs, temperatures, z, anchors, options, weight=1.0):
            iterates.append(z.detach().clone())
            g = torch.zeros_like(z)
            g[1, 0] = torch.sign(z[1, 0].detach() - options.threshold)
            pull = (g * z).sum(dim=1)
            return 0.5 + pull - pull.detach() + 0.0 * logits.sum(dim=1)

    steps = 200
    model = _BoxL1().eval()
    x = torch.rand(2, 1, 4, 4)
    options = ExtractionOptions(steps=steps, lr=0.1, warmup=0, multiplicative=False).with_defaults(Constrained.defaults)
    with GateHooks(model, ["conv"]) as hooks:
        fit = GateFit(model, hooks, [6], ConstantValue(), options, 1.0, None)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)
        result = fit.run(x, probs, torch.ones(2), probs.argmax(dim=1), torch.zeros(0, 6), torch.zeros(2), None)
    lengths = [len(h) for h in result["histories"]]
    assert lengths == [CONVERGENCE_WINDOW + 1, steps]
    binary = torch.stack(iterates) > options.threshold  # (steps run, rows, gates)
    for row, length in enumerate(lengths):
        if length < steps:
            window = binary[length - 1 - CONVERGENCE_WINDOW : length, row]
            assert (window == window[0]).all()
    gate = torch.stack(iterates)[:, 1, 0]
    reached = int(torch.nonzero(gate <= options.threshold)[0, 0])
    flips = (binary[1:, 1, 0] != binary[:-1, 1, 0]).int()
    for end in range(reached + CONVERGENCE_WINDOW, steps):
        assert flips[end - CONVERGENCE_WINDOW : end].any(), end


def test_k_starts_give_a_stability_score_consistent_with_the_returned_datapath(small, tmp_path):
    """stability[l][i, c] is the fraction of K starts whose binary datapath holds map c: a multiple of 1/K
    in [0, 1]; the returned datapath is one of the K, so it holds every map all K selected and only maps some
    start selected. Deterministic for a seed; logged as stability/<l> and restored from the npz."""
    model, images = small
    k = 4
    a = extract_datapaths(model, images, ROLES, steps=30, starts=k, seed=7)
    again = extract_datapaths(model, images, ROLES, steps=30, starts=k, seed=7)
    assert extract_datapaths(model, images, ROLES, steps=5).stability is None
    assert a.params["starts"] == k and a.params["start_noise"] == 0.02
    for s, s2, b in zip(a.stability, again.stability, a.binary()):
        assert s.shape == b.shape and s.dtype == np.float32
        np.testing.assert_array_equal(s, s2)
        np.testing.assert_allclose(s * k, np.round(s * k), atol=1e-5)
        assert ((s >= 0) & (s <= 1)).all()
        assert (b[s == 1]).all() and not (b[s == 0]).any()
    assert all(e.label_preserved for e in a.examples)
    path = str(tmp_path / "a.npz")
    a.save_npz(path)
    for s, s2 in zip(a.stability, Analysis.load_npz(path).stability):
        np.testing.assert_array_equal(s, s2)


def test_k_starts_options_are_checked(small):
    model, images = small
    with pytest.raises(ValueError, match="starts must be a positive integer"):
        extract_datapaths(model, images, ROLES, steps=2, starts=0)
    with pytest.raises(ValueError, match=r"start_noise must be a number in \(0, 1\)"):
        extract_datapaths(model, images, ROLES, steps=2, starts=2, start_noise=0.0)
    with pytest.raises(TypeError, match="unknown keyword"):
        extract_datapaths(model, images, ROLES, stepz=2)
