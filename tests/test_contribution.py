"""Contribution analysis (Eq. 7 / 8) on constructed models where the answer is known."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from scipy.optimize import lsq_linear
from torch import nn

from tensorboard_plugin_aevis import contribution
from tensorboard_plugin_aevis.contribution import feature_map_contributions, prediction_contributions
from tensorboard_plugin_aevis.contribution import box_qp, gated_forward, inputs, jacobian, model_access, objective as loss_terms, quadratic, receptive_field

MODES = ("sgd", "quadratic")


def _conv(in_ch, out_ch, weight, bias=0.0):
    conv = nn.Conv2d(in_ch, out_ch, weight.shape[-1], padding=weight.shape[-1] // 2)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.fill_(bias)
    return conv


def one_wire_model():
    """earlier: 4 random maps (ReLU); target channel 0 = 1.5 * earlier map 2 only."""
    torch.manual_seed(0)
    earlier = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    weight = torch.zeros(2, 4, 1, 1)
    weight[0, 2] = 1.5
    weight[1] = torch.rand(4, 1, 1)
    return nn.Sequential(earlier, _conv(4, 2, weight), nn.ReLU())


def gated_by_hooks(model, earlier, target, gates, images):
    """The target module's output with gates (B, C) multiplied on the earlier module's output: a whole
    forward pass with plain hooks, the reference for the engine's replay."""
    captured = {}
    h1 = earlier.register_forward_hook(lambda m, i, o: o * gates[:, :, None, None])
    h2 = target.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    with torch.no_grad():
        model(images)
    h1.remove()
    h2.remove()
    return captured["out"]


@pytest.mark.parametrize("mode", MODES)
def test_target_wired_to_one_map_ranks_it_first(mode):
    model = one_wire_model()
    images = torch.rand(2, 3, 12, 12)
    result = feature_map_contributions(model, images, "1", 0, "0", mode=mode)
    assert result.ranking[0] == 2
    assert result.scores[2] > 0.5
    others = [c for c in range(4) if c != 2]
    assert np.all(result.scores[others] < 0.05)  # they do not reach the target: L1 removes them
    assert result.gates.shape == (2, 4) and result.earlier_shape == (4, 12, 12)
    assert np.all(result.fidelity < 0.25)


def fig8_model_and_images():
    """Three earlier maps copying the input channels; the target sums 3x3 means of all three.

    FM0 and FM1 are large (5.0) over the left half of the image, outside the area of
    interest; FM2 (the relevant one) is 1.0 only around the area (rows/cols 9..14).
    """
    copy = torch.eye(3).view(3, 3, 1, 1)
    earlier = nn.Sequential(_conv(3, 3, copy), nn.ReLU())
    target = _conv(3, 1, torch.full((1, 3, 3, 3), 1.0 / 9.0))
    model = nn.Sequential(earlier, target, nn.ReLU())
    images = torch.zeros(1, 3, 16, 16)
    images[:, 0, :, :6] = 5.0
    images[:, 1, :, :5] = 5.0
    images[:, 2, 9:15, 9:15] = 1.0
    return model, images


@pytest.mark.parametrize("mode", MODES)
def test_fig8_area_ranks_relevant_map_first_where_whole_map_does_not(mode):
    model, images = fig8_model_and_images()
    area = (10, 10, 14, 14)  # 4x4 neurons; their receptive field (+1 each side) never reaches columns < 9
    whole = feature_map_contributions(model, images, "1", 0, "0", mode=mode)
    focused = feature_map_contributions(model, images, "1", 0, "0", area=area, mode=mode)
    # independent check of the construction: the area's neurons see only FM2
    with torch.no_grad():
        per_map = [model(images * torch.eye(3)[k].view(1, 3, 1, 1))[0, 0, 10:14, 10:14].abs().sum() for k in range(3)]
    assert per_map[0] == 0 and per_map[1] == 0 and per_map[2] > 0
    assert whole.ranking[0] in (0, 1) and whole.ranking[1] in (0, 1) and whole.ranking[2] == 2
    assert focused.ranking[0] == 2
    assert focused.region == (9, 9, 15, 15)  # the area dilated by the 3x3 kernel
    assert focused.area == area and focused.area_neurons == 16


@pytest.mark.parametrize("mode", MODES)
def test_area_as_boolean_mask_equals_rectangle(mode):
    model, images = fig8_model_and_images()
    mask = np.zeros((16, 16), dtype=bool)
    mask[10:14, 10:14] = True
    by_mask = feature_map_contributions(model, images, "1", 0, "0", area=mask, mode=mode)
    by_rect = feature_map_contributions(model, images, "1", 0, "0", area=(10, 10, 14, 14), mode=mode)
    np.testing.assert_allclose(by_mask.gates, by_rect.gates, atol=1e-5)
    assert by_mask.area is None and by_mask.area_neurons == 16


def two_example_model():
    """Target = map 0 + map 1 (1x1); example 0 activates only map 0, example 1 only map 1."""
    earlier = nn.Sequential(_conv(2, 2, torch.eye(2).view(2, 2, 1, 1)), nn.ReLU())
    model = nn.Sequential(earlier, _conv(2, 1, torch.ones(1, 2, 1, 1)))
    images = torch.zeros(2, 2, 6, 6)
    images[0, 0] = 1.0
    images[1, 1] = 1.0
    return model, images


@pytest.mark.parametrize("mode", MODES)
def test_gamma_ties_the_datapaths_together(mode):
    model, images = two_example_model()
    free = feature_map_contributions(model, images, "1", 0, "0", mode=mode, gamma=0.0, steps=40)
    assert free.gates[0, 0] > 0.5 and free.gates[0, 1] < 0.05
    assert free.gates[1, 1] > 0.5 and free.gates[1, 0] < 0.05
    tied = feature_map_contributions(model, images, "1", 0, "0", mode=mode, gamma=5.0, steps=40)
    gap_free = np.abs(free.gates[0] - free.gates[1]).sum()
    gap_tied = np.abs(tied.gates[0] - tied.gates[1]).sum()
    assert gap_tied < 0.5 * gap_free


@pytest.mark.parametrize("mode", MODES)
def test_prediction_contributions_rank_the_map_the_logits_read(mode):
    torch.manual_seed(0)
    head = nn.Linear(3, 4)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, 1] = torch.tensor([6.0, -3.0, 0.0, -3.0])  # only map 1 reaches the logits
        head.bias.zero_()
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    with torch.no_grad():
        model[0][0].bias.fill_(0.5)  # every map active
    result = prediction_contributions(model, torch.rand(1, 3, 8, 8), "0", mode=mode)
    assert result.ranking[0] == 1 and result.target_layer is None
    assert result.scores[1] > 0.5 and result.scores[0] < 0.05 and result.scores[2] < 0.05


@pytest.mark.parametrize("max_rows,area", [(64, None), (10, None), (64, (2, 2, 4, 5))])
def test_quadratic_jacobian_matches_finite_differences_of_a_linear_path(max_rows, area):
    """For a target linear in the gates, J[:, k] = f(1) - f(1 - e_k) exactly (sketched: D J);
    with an area, the gates act on the receptive-field region (the area dilated by 1)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU()), nn.Conv2d(5, 2, 3, padding=1))
    images = torch.rand(2, 3, 7, 7)
    forward = gated_forward.GatedForward(model, "0", "1")
    if area is None:
        select = lambda out: out[:, 1]  # noqa: E731
    else:
        mask, _ = inputs.area_mask(area, 7, 7)
        select = lambda out: out[:, 1][:, mask]  # noqa: E731
    with model_access.analysis_mode(model), forward.hooks():
        with torch.no_grad():
            forward.prepare(images, "0", "1")
        jac, directions, region, rectangle, _ = jacobian.jacobian(forward, images, select, 5, max_rows, 0, area is not None)
        neurons = 49 if area is None else 6
        assert directions.shape == ((neurons, neurons) if max_rows >= neurons else (max_rows, neurons))
        assert rectangle == (None if area is None else (1, 1, 5, 6))
        with torch.no_grad():
            ones = torch.ones(2, 5)
            base = select(forward.run(ones, region)).flatten(1)
            for k in range(5):
                dropped = ones.clone()
                dropped[:, k] = 0
                column = (base - select(forward.run(dropped, region)).flatten(1)) @ directions.T
                torch.testing.assert_close(jac[:, :, k], column, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("earlier,target", [("layer2", "layer3.0"), ("layer1.1.conv2", "layer2.0"), ("layer3.1", "layer4")])
def test_replay_between_layers_equals_a_full_gated_forward(earlier, target):
    """The replay (only the part between the layers) against a plain hooked forward pass."""
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.rand(2, 3, 48, 48)
    modules = dict(model.named_modules())
    forward = gated_forward.GatedForward(model, earlier, target)
    with model_access.analysis_mode(model), forward.hooks(), torch.no_grad():
        forward.prepare(images, earlier, target)
        channels = forward.gated.shape[1]
        gates = torch.rand(2, channels)
        replayed = forward.run(gates, None)
    torch.testing.assert_close(replayed, gated_by_hooks(model, modules[earlier], modules[target], gates, images), rtol=1e-4, atol=1e-5)


def test_model_left_bit_identical():
    model = torchvision.models.resnet18(num_classes=10)
    model.train()
    model.layer1.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    for mode in MODES:
        feature_map_contributions(model, torch.rand(1, 3, 32, 32), "layer2.1", 3, "layer2.0", area=(0, 0, 2, 2), mode=mode, steps=3)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN running stats untouched
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(area=(0, 0, 20, 4)), "outside the 12x12 target map"),
        (dict(area=(3, 3, 3, 5)), "outside the 12x12 target map or empty"),
        (dict(area=np.zeros((5, 5), dtype=bool)), "mask has shape (5, 5)"),
        (dict(area=np.zeros((12, 12), dtype=bool)), "selects no neuron"),
        (dict(area="left"), "area must be a rectangle"),
        (dict(channel=7), "channel 7 does not exist in target layer '1': it has 2 feature maps"),
        (dict(earlier_layer="2"), "does not run before target layer '1'"),
        (dict(earlier_layer="1"), "are both '1'"),
        (dict(earlier_layer="nope"), "unknown earlier layer 'nope'"),
        (dict(target_layer="0.9"), "unknown target layer '0.9'"),
        (dict(mode="adam"), "unknown mode 'adam'"),
        (dict(lambda_=-1.0), "lambda_ must be"),
    ],
)
def test_bad_input_names_the_problem(kwargs, message):
    model = one_wire_model()
    args = dict(target_layer="1", channel=0, earlier_layer="0")
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        feature_map_contributions(model, torch.rand(1, 3, 12, 12), **args)
    assert message in str(info.value)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_dead_target_area_is_refused():
    model, images = fig8_model_and_images()
    with pytest.raises(ValueError, match="preserved neurons are all zero"):
        feature_map_contributions(model, images, "1", 0, "0", area=(0, 12, 2, 16))


def test_deadline_stops_the_computation():
    model = one_wire_model()
    with pytest.raises(contribution.ContributionTimeout, match="time limit"):
        feature_map_contributions(model, torch.rand(1, 3, 12, 12), "1", 0, "0", deadline=0.0)


def test_to_json_ranks_all_maps():
    model = one_wire_model()
    result = feature_map_contributions(model, torch.rand(1, 3, 12, 12), "1", 0, "0", mode="quadratic")
    body = result.to_json(top=2)
    assert [r["channel"] for r in body["ranking"]] == result.ranking[:2]
    assert len(body["scores"]) == 4 and body["mode"] == "quadratic" and body["area"] is None


def test_cli_json_matches_the_engine_and_refuses_a_bad_area(capsys, monkeypatch):
    import json

    from tensorboard_plugin_aevis import cli
    from tensorboard_plugin_aevis.models import load_model
    from tensorboard_plugin_aevis.sample_images import load_photo

    monkeypatch.syspath_prepend(__file__.rsplit("/", 1)[0])  # run_fixtures:TinyCNN as a module:factory spec
    common = ["contribution", "--model", "run_fixtures:TinyCNN", "--photo", "chelsea", "--size", "24",
              "--target-layer", "model.features.6", "--channel", "3", "--earlier-layer", "model.features.3", "--mode", "quadratic"]
    assert cli.main(common + ["--area", "2,2,6,6", "--json", "--top", "3"]) == 0
    body = json.loads(capsys.readouterr().out)
    expected = feature_map_contributions(load_model("run_fixtures:TinyCNN"), load_photo("chelsea", 24)[None], "model.features.6", 3,
                                         "model.features.3", area=(2, 2, 6, 6), mode="quadratic")
    assert [r["channel"] for r in body["ranking"]] == expected.ranking[:3]
    np.testing.assert_allclose(body["scores"], expected.scores, atol=1e-5)
    assert cli.main(common + ["--area", "2,2,60,6"]) == 2
    assert "outside the 12x12 target map" in capsys.readouterr().err
    assert cli.main(common + ["--area", "2,2"]) == 2
    assert "four integers" in capsys.readouterr().err


def test_session_queries_equal_fresh_calls():
    """One prepared session answering several queries gives what separate calls give, also an SGD query
    that starts from the quadratic answer the session kept for the same area."""
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.rand(2, 3, 48, 48)
    session = contribution.ContributionSession(model, images, "layer2.0", "layer2.1")
    assert session.target_shape == (128, 6, 6) and session.earlier_shape == (128, 6, 6)
    captured = []
    handle = model.layer2[1].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(images)
    handle.remove()
    active = captured[0][:, :, 1:5, 1:5].amin(dim=(2, 3)).amin(dim=0).argsort(descending=True)  # active on both images
    first, second = int(active[0]), int(active[1])
    queries = [(first, (1, 1, 3, 3), "quadratic"), (second, None, "quadratic"), (first, (2, 2, 5, 4), "sgd"), (first, (1, 1, 3, 3), "sgd")]
    for channel, area, mode in queries:
        reused = session.feature_map(channel, area, mode=mode, steps=5)
        fresh = feature_map_contributions(model, images, "layer2.1", channel, "layer2.0", area=area, mode=mode, steps=5)
        np.testing.assert_allclose(reused.gates, fresh.gates, atol=1e-5)
        assert reused.region == fresh.region
    with pytest.raises(ValueError, match="target is a feature map"):
        session.prediction()


@pytest.mark.parametrize("m", [1, 3])
def test_quadratic_objective_matches_the_torch_penalties(m):
    """The solver's numpy objective equals the fidelity + _penalties computed by autograd."""
    torch.manual_seed(4)
    jac = torch.randn(m, 4, 7, dtype=torch.float64)
    z = torch.rand(m, 7, dtype=torch.float64, requires_grad=True)
    value, grad = loss_terms.quadratic_objective(jac.numpy(), 0.5, 0.3, None)(z.detach().numpy().reshape(-1))
    reference = (torch.einsum("irc,ic->ir", jac, 1 - z) ** 2).sum() + loss_terms.penalties(z, 0.5, 0.3)
    reference.backward()
    assert value == pytest.approx(float(reference.detach()), rel=1e-12)
    np.testing.assert_allclose(grad, z.grad.numpy().reshape(-1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("m,gamma", [(1, 0.0), (2, 0.0), (3, 0.3), (5, 0.05)])
def test_quadratic_solver_reaches_the_reference_optimum(m, gamma):
    """The solver's box-constrained optimum against a tightly converged L-BFGS-B run on the same objective."""
    import scipy.optimize

    rng = np.random.default_rng(5)
    jac = torch.from_numpy(rng.normal(size=(m, 6, 40)) * rng.random(40))  # a few strong maps, many weak ones
    norms = torch.ones(m, dtype=torch.float64)
    gates = quadratic.fit_quadratic(jac, norms, 0.5, gamma, None).double().numpy().reshape(-1)
    objective = loss_terms.quadratic_objective(jac.numpy(), 0.5, gamma, None)
    reference = scipy.optimize.minimize(objective, np.ones(m * 40), jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * (m * 40),
                                        options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
    assert np.all((gates >= 0) & (gates <= 1))
    assert objective(gates)[0] <= reference.fun * 1.01
    assert objective(gates)[0] < objective(np.ones(m * 40))[0] * 0.9


class _GlobalScale(nn.Module):
    """Squeeze-and-excitation style: every output neuron depends on the whole map (not spatially local)."""

    def forward(self, x):
        return x * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True))


@pytest.mark.parametrize(
    "earlier,target,area,expect_crop",
    [
        ("layer2.0", "layer2.1", (4, 5, 8, 9), (2, 3, 10, 11)),  # same grid: two 3x3 convs widen the area by 2
        # stride 2: three 3x3 convs on the 12x12 grid and a strided one need a margin of 3.5 target neurons;
        # the margin doubles 1 -> 2 -> 4, clipped at the top and right edges
        ("layer1", "layer2.1", (2, 7, 4, 9), (0, 6, 16, 24)),
        ("layer1.1.conv2", "layer2.0", (4, 4, 6, 6), None),  # the residual sum inside layer1.1 still carries whole maps
    ],
)
def test_crop_to_the_area_equals_the_whole_maps(earlier, target, area, expect_crop):
    """Eq. 8 on the crop of the earlier maps the area depends on gives the whole-map result:
    the same SGD gates, and the same Jacobian for the quadratic mode (whose box-constrained
    optimum is not unique when J has fewer rows than maps, so its gates are compared through J)."""
    torch.manual_seed(6)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.rand(2, 3, 96, 96)
    session = contribution.ContributionSession(model, images, earlier, target)
    out = session._output
    channel = int(out[:, :, area[0] : area[2], area[1] : area[3]].amin(dim=(0, 2, 3)).argmax())  # active on both images
    whole = session.feature_map(channel, area, mode="sgd", steps=8, crop=False)
    cropped = session.feature_map(channel, area, mode="sgd", steps=8)
    assert whole.crop is None and cropped.crop == expect_crop
    assert session.feature_map(channel, area, mode="quadratic").crop == expect_crop
    np.testing.assert_allclose(cropped.gates, whole.gates, atol=1e-4)
    np.testing.assert_allclose(cropped.fidelity, whole.fidelity, rtol=1e-3, atol=1e-6)
    assert cropped.region == whole.region
    if expect_crop is None:
        return
    forward, channels = session._forward, session.earlier_shape[0]
    mask, _ = inputs.area_mask(area, out.shape[2], out.shape[3])
    with model_access.analysis_mode(model), forward.hooks():
        jac_whole, _, _, rect_whole, _ = jacobian.jacobian(forward, images, lambda o: o[:, channel][:, mask], channels, 64, 0, True)
        with torch.no_grad():
            (crop, window), _ = receptive_field.local_crop(forward, mask, channel, out[:, channel][:, mask], session.earlier_shape[1:], 1)
        forward.crop = crop
        jac_crop, _, _, rect_crop, _ = jacobian.jacobian(forward, images, lambda o: o[:, channel][:, window], channels, 64, 0, True)
        forward.crop = None
    torch.testing.assert_close(jac_crop, jac_whole, rtol=1e-4, atol=1e-5 * float(jac_whole.abs().max()))
    assert receptive_field.shift(rect_crop, crop) == rect_whole


def test_crop_refused_for_a_global_operation():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()), nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), _GlobalScale()))
    images = torch.rand(1, 3, 16, 16) + 0.5
    session = contribution.ContributionSession(model, images, "0", "1")
    channel = int(session._output[0, :, 6:9, 6:9].amin(dim=(1, 2)).argmax())
    for mode in MODES:
        whole = session.feature_map(channel, (6, 6, 9, 9), mode=mode, steps=5, crop=False)
        result = session.feature_map(channel, (6, 6, 9, 9), mode=mode, steps=5)
        assert result.crop is None and session._crop_margin is None
        np.testing.assert_allclose(result.gates, whole.gates, atol=1e-6)
        assert result.region == whole.region == (0, 0, 16, 16)  # the mean reaches every earlier neuron


@pytest.mark.parametrize("rows,maps,seed", [(6, 40, 0), (16, 1024, 1), (64, 300, 2), (3, 3, 3)])
def test_box_quadratic_meets_the_optimality_conditions(rows, maps, seed):
    """The uncoupled solver's answer satisfies KKT: gradient >= 0 at z = 0, <= 0 at z = 1, 0 between."""
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(rows, maps)) * rng.random(maps) ** 3  # few strong maps, many weak: rank-deficient Hessian
    jac[:, 1] = jac[:, 0]  # duplicate columns: a non-unique optimum
    linear = 0.5 / maps
    z = box_qp.solve_box_quadratic(jac, linear, 20000, None)
    grad = linear - 2.0 * jac.T @ (jac @ (1.0 - z))
    tol = 1e-5 * linear
    assert np.all((z >= 0) & (z <= 1))
    assert np.all(grad[z == 0] >= -tol) and np.all(grad[z == 1] <= tol)
    inside = (z > 0) & (z < 1)
    assert np.all(np.abs(grad[inside]) <= tol)


@pytest.mark.parametrize("rows, free", [(96, 384), (96, 200), (16, 64), (96, 60), (16, 16)])
def test_min_norm_solution_is_lstsq_of_the_free_hessian(rows, free):
    """The active set's step from the SVD of J_F equals numpy's lstsq of 2 J_F^T J_F (rank-deficient
    when F > R: the minimum-norm solution), to the rounding a solve of that conditioning allows
    (float64 eps times the condition number of the kept part, times a margin of 1000)."""
    rng = np.random.default_rng(rows + free)
    cols = rng.normal(size=(rows, free)) * rng.random(free) ** 3
    rhs = rng.normal(size=free)
    expected = np.linalg.lstsq(2.0 * cols.T @ cols, rhs, rcond=None)[0]
    s = np.linalg.svd(cols, compute_uv=False)
    kept = s[s**2 > np.finfo(float).eps * free * s.max() ** 2]
    condition = (kept.max() / kept.min()) ** 2
    np.testing.assert_allclose(box_qp.min_norm_solution(cols, rhs), expected, rtol=0,
                               atol=1e3 * np.finfo(float).eps * condition * np.abs(expected).max())



@pytest.mark.parametrize("rows,maps,seed", [(12, 8, 0), (30, 20, 1), (5, 5, 2), (40, 24, 3)])
def test_box_quadratic_equals_scipy_bounded_least_squares(rows, maps, seed):
    """An independent check: with J of full column rank, ``||b - J z||^2 + linear * sum(z)`` is
    ``||d - J z||^2 + const`` for ``d = b - J (J^T J)^-1 1 linear / 2``, whose box-constrained minimiser
    scipy's ``lsq_linear`` (BVLS) finds. The solver stops at KKT violations v_c <= 1e-6 linear, so
    its objective exceeds the optimum by at most ``sum_c v_c |z_c - z*_c| <= C 1e-6 linear``; the
    objective being strongly convex with modulus mu = 2 sigma_min(J)^2, its distance to scipy's
    answer is at most ``sqrt(2 gap / mu)`` for the two answers' gaps (scipy's bounded the same way
    by its own KKT violations)."""
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(rows, maps)) * rng.random(maps)
    target = jac @ rng.uniform(-0.5, 1.5, size=maps)  # optimum with gates at 0, at 1 and between
    linear = 0.3 * float(np.abs(jac.T @ target).mean())

    def objective(z):
        return float(np.sum((target - jac @ z) ** 2)) + linear * float(z.sum())

    def violations(z):
        grad = linear - 2.0 * jac.T @ (target - jac @ z)
        return np.where(z <= 0, np.maximum(-grad, 0), np.where(z >= 1, np.maximum(grad, 0), np.abs(grad)))

    shifted = target - jac @ np.linalg.solve(jac.T @ jac, np.full(maps, linear / 2.0))
    reference = lsq_linear(jac, shifted, bounds=(0.0, 1.0), method="bvls", tol=1e-14).x
    z = box_qp.solve_box_quadratic(jac, linear, 20000, None, target)
    ours_gap, reference_gap = maps * 1e-6 * linear, float(violations(reference).sum())
    assert np.all((z >= 0) & (z <= 1))
    assert (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any(), "the problem should have gates at 0, at 1 and between"
    assert objective(z) <= objective(reference) + ours_gap
    mu = 2.0 * np.linalg.svd(jac, compute_uv=False).min() ** 2
    assert np.abs(z - reference).max() <= np.sqrt(2.0 * ours_gap / mu) + np.sqrt(2.0 * reference_gap / mu)


@pytest.mark.parametrize("rows,free,duplicate", [(48, 40, False), (16, 16, False), (48, 40, True), (16, 64, False)])
def test_subspace_step_solves_the_free_system_else_falls_back_to_the_minimum_norm_one(rows, free, duplicate):
    """Full column rank (F <= R): the unique solution of ``2 A^T A p = rhs`` (residual within the
    tolerance given); a duplicated column (singular) or F > R: :func:`box_qp.min_norm_solution`."""
    rng = np.random.default_rng(rows + free)
    cols = rng.normal(size=(rows, free)) * rng.random(free)
    if duplicate:
        cols[:, 1] = cols[:, 0]
    rhs = rng.normal(size=free)
    gram = cols.T @ cols
    tol = 1e-9 * float(np.abs(rhs).max())
    step = box_qp.subspace_step(cols, gram, rhs, tol)
    if duplicate or free > rows:
        np.testing.assert_array_equal(step, box_qp.min_norm_solution(cols, rhs))
    else:
        assert np.abs(rhs - 2.0 * gram @ step).max() <= tol


_SOLVER_THREADS_SCRIPT = """
import os, time
import numpy as np
from tensorboard_plugin_aevis.contribution import box_qp

def cpu_ticks():
    task = f"/proc/{os.getpid()}/task"
    ticks = {}
    for tid in os.listdir(task):
        fields = open(f"{task}/{tid}/stat").read().rsplit(")", 1)[1].split()
        ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks

rng = np.random.default_rng(1)
jac = rng.normal(size=(16, 1024)) * rng.random(1024) ** 3  # the resnet50 benchmark's shape: 16 rows, 1024 maps
time.sleep(0.2)  # any thread started at import settles
before, start = cpu_ticks(), time.process_time()
stacked = rng.normal(size=(96, 1024)) * rng.random(1024) ** 3  # 6 examples' rows stacked (fused.solve_fused)
for _ in range(2):
    box_qp.solve_box_quadratic(jac, 0.5 / 1024, 20000, None)
    box_qp.solve_box_quadratic(jac, 0.5 / 1024, 20000, None, 0.5 * jac.sum(axis=1), np.full(1024, 0.5))
    box_qp.solve_box_quadratic(stacked, 3.0 / 1024, 20000, None)
after = cpu_ticks()
others = sum(t - before.get(tid, 0) for tid, t in after.items() if tid != os.getpid())
print(len(after), others, time.process_time() - start)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2, reason="needs Linux /proc and 2+ cores")
def test_box_quadratic_runs_on_the_calling_thread_only():
    """The solver leaves numpy's BLAS threads idle: they would fight torch's threads for the cores.

    Measured on the resnet50 benchmark (2 cores): 0.18 s per quadratic query with ``@``
    products that OpenBLAS threads, 0.06 s without. In a fresh process (no torch thread
    spinning), the CPU time of every thread but the main one must stay flat over solves
    of the benchmark's size and of six examples' rows stacked (whose active-set finish solves
    least squares of up to 384 free gates); with ``jac @ z`` products outside the one-thread limit
    OpenBLAS's threads took 82 ticks of 10 ms here.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", _SOLVER_THREADS_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    threads, others, seconds = done.stdout.split()
    assert int(threads) > 1, "numpy's BLAS started no thread: nothing to check"
    assert float(seconds) > 0.2, "the solves were too short for the 10 ms tick of /proc"
    assert int(others) <= 2, f"other threads used {int(others)} ticks during the solves"


class _ListNet(nn.Module):
    """Blocks in an nn.ModuleList (as EfficientNet's ``_blocks``): the list itself is never called."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()) for _ in range(3)])
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x) + x
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("earlier,target", [("blocks.0", "blocks.2"), ("blocks.0.0", "blocks.1"), ("blocks.1", None)])
def test_layers_inside_a_module_list(earlier, target):
    """The replay works when the layers' common ancestor is a ModuleList, and equals a hooked forward pass."""
    torch.manual_seed(8)
    model = _ListNet().eval()
    images = torch.rand(2, 3, 10, 10)
    modules = dict(model.named_modules())
    forward = gated_forward.GatedForward(model, earlier, target)
    with model_access.analysis_mode(model), forward.hooks(), torch.no_grad():
        forward.prepare(images, earlier, target)
        assert forward._lca_path == ""  # moved up from 'blocks' to the model, which is called
        gates = torch.rand(2, 6)
        replayed = forward.run(gates, None)
    torch.testing.assert_close(replayed, gated_by_hooks(model, modules[earlier], modules[target or ""], gates, images),
                               rtol=1e-4, atol=1e-5)


def test_jacobian_at_other_gates_matches_central_differences():
    """Gauss-Newton needs J at the solution: d f / d z_k at z_t against central differences of the real network."""
    torch.manual_seed(9)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU()), nn.Sequential(nn.Conv2d(5, 4, 3, padding=1), nn.Tanh()),
                          nn.Conv2d(4, 2, 3, padding=1))
    images = torch.rand(2, 3, 8, 8)
    mask, _ = inputs.area_mask((2, 2, 5, 6), 8, 8)
    select = lambda out: out[:, 1][:, mask]  # noqa: E731
    forward = gated_forward.GatedForward(model, "0", "2")
    with model_access.analysis_mode(model), forward.hooks():
        with torch.no_grad():
            forward.prepare(images, "0", "2")
        _, _, region, _, _ = jacobian.jacobian(forward, images, select, 5, 64, 0, True)
        gates = torch.rand(2, 5) * 0.6 + 0.2
        jac, directions, _, _, at_gates = jacobian.jacobian(forward, images, select, 5, 64, 0, False, gates, region)
        with torch.no_grad():
            torch.testing.assert_close(at_gates, select(forward.run(gates, region)).flatten(1) @ directions.T)
            for k in range(5):
                step = torch.zeros(2, 5)
                step[:, k] = 1e-2
                column = (select(forward.run(gates + step, region)) - select(forward.run(gates - step, region))).flatten(1) / 2e-2
                torch.testing.assert_close(jac[:, :, k], column @ directions.T, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("area", [None, (3, 3, 7, 7)])
def test_relinearising_a_path_linear_in_the_gates_changes_nothing(area):
    """Where f is linear in z the first linearisation is exact, so the Gauss-Newton step keeps its solution."""
    model = one_wire_model()
    images = torch.rand(2, 3, 12, 12)
    once = feature_map_contributions(model, images, "1", 1, "0", area=area, mode="quadratic", relinearise=0)
    twice = feature_map_contributions(model, images, "1", 1, "0", area=area, mode="quadratic", relinearise=2)
    np.testing.assert_allclose(twice.gates, once.gates, atol=1e-4)
    assert twice.params["relinearise"] == 2


@pytest.mark.parametrize("mode", MODES)
def test_maps_of_equal_score_are_ranked_by_how_much_the_fit_needs_them(mode):
    """A large lambda sends every gate to 0 (a tie); the maps wired to the target then rank by
    how much of it they carry (the gradient at z = 0: -2 <w_k m_k, f> / ||f||^2 + lambda / C),
    not by channel index, and the two unwired maps come last."""
    torch.manual_seed(10)
    earlier = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    weight = torch.zeros(1, 4, 1, 1)
    weight[0, 1], weight[0, 3] = 1.0, 3.0
    model = nn.Sequential(earlier, _conv(4, 1, weight))
    images = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        maps = earlier(images)[0]
        target = weight[0, 1] * maps[1] + weight[0, 3] * maps[3]
        carried = {k: float((weight[0, k] * maps[k] * target).sum()) for k in (1, 3)}
    assert min(carried.values()) > 0
    result = feature_map_contributions(model, images, "1", 0, "0", mode=mode, lambda_=50.0)
    assert np.all(result.scores == 0.0)
    assert result.ranking == sorted((1, 3), key=lambda k: -carried[k]) + [0, 2]


@pytest.mark.parametrize("earlier,target", [("layer2", "layer3.0"), ("layer3.1", "layer4")])
def test_replay_on_a_loaded_artifact_runs_only_the_part_between_the_layers(tmp_path, earlier, target):
    """A model read back from its artifact (torch.export.unflatten: modules that cannot be traced
    but run an fx graph): the replay equals a full gated forward and calls no module before the
    earlier layer again (issue #15: it used to re-run the whole network per step)."""
    from tensorboard_plugin_aevis import model_artifact

    torch.manual_seed(2)
    original = torchvision.models.resnet18(num_classes=10).eval()
    directory = model_artifact.save_model_artifact(original, torch.rand(3, 48, 48), str(tmp_path / "artifact"))
    model = model_artifact.load_model_artifact(directory)
    images = torch.rand(2, 3, 48, 48)
    modules = dict(model.named_modules())
    calls = []
    handle = modules["layer1"].register_forward_hook(lambda *a: calls.append(1))  # runs before every earlier layer tested
    forward = gated_forward.GatedForward(model, earlier, target)
    with model_access.analysis_mode(model), forward.hooks(), torch.no_grad():
        forward.prepare(images, earlier, target)
        prepared = len(calls)
        gates = torch.rand(2, forward.gated.shape[1])
        replayed = forward.run(gates, None)
        forward.run(gates, None)
    handle.remove()
    assert len(calls) == prepared  # the replays did not run layer1
    torch.testing.assert_close(replayed, gated_by_hooks(model, modules[earlier], modules[target], gates, images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loaded", [False, True])
def test_prepare_runs_the_layers_before_the_earlier_one_once(tmp_path, loaded):
    """Preparing is one forward pass: the replay's cached values are the outputs of the LCA's children
    in that pass (issue #15: the graph up to the earlier layer used to run a second time), on a plain
    model (traced) and on one read back from its artifact (its own graph)."""
    from tensorboard_plugin_aevis import model_artifact

    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=10).eval()
    if loaded:
        model = model_artifact.load_model_artifact(model_artifact.save_model_artifact(model, torch.rand(3, 48, 48), str(tmp_path / "a")))
    images = torch.rand(2, 3, 48, 48)
    modules = dict(model.named_modules())
    calls = []
    handles = [modules[name].register_forward_hook(lambda *a, name=name: calls.append(name)) for name in ("conv1", "layer1")]
    forward = gated_forward.GatedForward(model, "layer3.1", "layer4")
    with model_access.analysis_mode(model), forward.hooks(), torch.no_grad():
        forward.prepare(images, "layer3.1", "layer4")
        gates = torch.rand(2, forward.gated.shape[1])
        replayed = forward.run(gates, None)
    for handle in handles:
        handle.remove()
    assert calls == ["conv1", "layer1"]
    torch.testing.assert_close(replayed, gated_by_hooks(model, modules["layer3.1"], modules["layer4"], gates, images), rtol=1e-4, atol=1e-5)


class _MutatedBeforeTheEarlierLayer(nn.Module):
    """A value the layers after the earlier one read, changed in place by a call whose result is unused."""

    def __init__(self):
        super().__init__()
        self.stem, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True)
        self.earlier, self.target = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        h = self.stem(x)
        self.act(h)
        return self.target(self.earlier(h) + h)


def test_replay_computes_again_what_an_in_place_call_changed():
    """``stem``'s output is changed in place by ``act``, so the pass's record of it is not the value the
    layers after the earlier one read: preparing computes it again from the graph (not by replaying
    the whole model per call) and the replay equals a full gated forward."""
    torch.manual_seed(4)
    model = _MutatedBeforeTheEarlierLayer().eval()
    images = torch.randn(2, 3, 8, 8)
    calls = []
    handle = model.stem.register_forward_hook(lambda *a: calls.append(1))
    forward = gated_forward.GatedForward(model, "earlier", "target")
    with model_access.analysis_mode(model), forward.hooks(), torch.no_grad():
        forward.prepare(images, "earlier", "target")
        prepared = len(calls)
        gates = torch.rand(2, 4)
        replayed = forward.run(gates, None)
    handle.remove()
    assert len(calls) == prepared  # the replay runs only what follows the earlier layer
    torch.testing.assert_close(replayed, gated_by_hooks(model, model.earlier, model.target, gates, images), rtol=1e-4, atol=1e-5)


def test_prediction_replay_on_a_loaded_artifact_starts_inside_the_wrapper(tmp_path):
    """Contribution to the prediction on a ClassifierWrapper read back from its artifact: the replay
    runs from the earlier layer inside the wrapped network (no module before it runs again) and
    equals a full forward pass gated by a hook."""
    from tensorboard_plugin_aevis import model_artifact
    from tensorboard_plugin_aevis.models import ClassifierWrapper

    torch.manual_seed(3)
    net = torchvision.models.resnet18(num_classes=10).eval()
    original = ClassifierWrapper(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
    directory = model_artifact.save_model_artifact(original, torch.rand(3, 48, 48), str(tmp_path / "artifact"))
    model = model_artifact.load_model_artifact(directory)
    images = torch.rand(2, 3, 48, 48)
    calls = []
    handle = model.get_submodule("model.layer1").register_forward_hook(lambda *a: calls.append(1))
    forward = gated_forward.GatedForward(model, "model.layer3", None)
    with model_access.analysis_mode(model), forward.hooks(), torch.no_grad():
        forward.prepare(images, "model.layer3", None)
        prepared = len(calls)
        gates = torch.rand(2, forward.gated.shape[1])
        replayed = forward.run(gates, None)
    handle.remove()
    assert len(calls) == prepared
    gate = model.get_submodule("model.layer3").register_forward_hook(lambda m, i, o: o * gates[:, :, None, None])
    with torch.no_grad():
        expected = model(images)
    gate.remove()
    torch.testing.assert_close(replayed, expected, rtol=1e-4, atol=1e-5)


def _fidelity_through_hooks(model, images, query, result):
    """(m,) the relative error of the area's neurons of the target map at ``result.gates`` through a
    plain forward pass gated by a hook (not the replay), and the gates (m, C)."""
    earlier, target = model.get_submodule(query["earlier_layer"]), model.get_submodule(query["target_layer"])
    y0, x0, y1, x1 = result.region
    ay0, ax0, ay1, ax1 = result.area
    z = torch.from_numpy(result.gates).float()

    def target_area(gates):
        captured = {}
        handles = [target.register_forward_hook(lambda m, i, o: captured.update(out=o))]
        if gates is not None:
            def gate(module, inputs, output):
                factor = torch.ones_like(output)
                factor[:, :, y0:y1, x0:x1] = gates[:, :, None, None]
                return output * factor
            handles.append(earlier.register_forward_hook(gate))
        with torch.no_grad():
            model(images)
        for handle in handles:
            handle.remove()
        return captured["out"][:, query["channel"], ay0:ay1, ax0:ax1].flatten(1)

    reference, gated = target_area(None), target_area(z)
    return ((gated - reference) ** 2).sum(1) / (reference**2).sum(1), z


def _loss_through_hooks(model, images, query, result):
    """Eq. 7/8's loss of ``result.gates`` through a plain forward pass gated by a hook (not the replay):
    :func:`_fidelity_through_hooks` summed plus the penalties."""
    fidelity, z = _fidelity_through_hooks(model, images, query, result)
    return float(fidelity.sum() + loss_terms.penalties(z, contribution.DEFAULT_LAMBDA, contribution.DEFAULT_GAMMA))


@pytest.mark.parametrize("relinearise", [0, 1, 2])
def test_quadratic_fidelity_is_the_relative_error_through_the_network_at_its_gates(relinearise):
    """The quadratic answer's fidelity (taken from the passes that also serve the linearisations) is
    the relative error of the preserved neurons at the returned gates through a plain gated forward pass."""
    sys.path.insert(0, os.path.dirname(__file__))
    from run_fixtures import TinyCNN

    model = TinyCNN(1).eval()
    images = torch.rand(3, 3, 24, 24)
    query = dict(target_layer="features.9", channel=2, earlier_layer="features.6", area=(0, 0, 6, 6), mode="quadratic")
    result = feature_map_contributions(model, images, **query, relinearise=relinearise)
    expected, _ = _fidelity_through_hooks(model, images, query, result)
    np.testing.assert_allclose(result.fidelity, expected.numpy(), rtol=1e-4, atol=1e-6)


def test_a_gauss_newton_step_that_raises_the_loss_is_not_returned(monkeypatch):
    """The quadratic mode returns the lowest-loss solution through the network among its linearisations'
    (the first on ties). A Gauss-Newton solve that lands on closed gates (forced here by wrapping the
    solver: on random resnet50 weights real steps raised the loss on 5 of 8 maps, docs/method.md) is
    therefore dropped and the first linearisation's answer, and its gradient, returned; an honest
    step that lowers the loss is kept."""
    sys.path.insert(0, os.path.dirname(__file__))
    from run_fixtures import TinyCNN

    model = TinyCNN(1).eval()
    images = torch.rand(3, 3, 24, 24)
    query = dict(target_layer="features.9", channel=2, earlier_layer="features.6", area=(0, 0, 6, 6), mode="quadratic")
    once = feature_map_contributions(model, images, **query, relinearise=0)
    honest = feature_map_contributions(model, images, **query, relinearise=1)
    assert _loss_through_hooks(model, images, query, honest) < _loss_through_hooks(model, images, query, once)
    solve = quadratic.fit_quadratic
    calls = []

    def closing_second_solve(*args, **kwargs):
        calls.append(1)
        gates = solve(*args, **kwargs)
        return gates if len(calls) == 1 else torch.zeros_like(gates)

    monkeypatch.setattr(quadratic, "fit_quadratic", closing_second_solve)
    guarded = feature_map_contributions(model, images, **query, relinearise=1)
    assert len(calls) == 2
    np.testing.assert_array_equal(guarded.gates, once.gates)
    np.testing.assert_array_equal(guarded.scores, once.scores)
    # the first solution's fidelity, from the second linearisation's forward pass
    np.testing.assert_allclose(guarded.fidelity, _fidelity_through_hooks(model, images, query, guarded)[0].numpy(), rtol=1e-4, atol=1e-6)
    assert guarded.to_json()["ranking"] == once.to_json()["ranking"]  # ties ordered by the first quadratic's gradient


def test_sgd_answer_is_never_worse_than_its_quadratic_start_nor_than_fewer_steps():
    """The SGD mode starts at the quadratic mode's gates and keeps the lowest-loss iterate: its loss through
    the network (recomputed with a hook-gated full forward pass) is at most the quadratic answer's, and more
    Adam steps never raise it (the trajectory of k steps is the prefix of the one of k + 5)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from run_fixtures import TinyCNN

    model = TinyCNN(1).eval()  # its constructor seeds torch; the images follow from that state
    images = torch.rand(3, 3, 24, 24)
    query = dict(target_layer="features.9", channel=2, earlier_layer="features.6", area=(0, 0, 6, 6))
    quadratic_answer = feature_map_contributions(model, images, **query, mode="quadratic")
    losses = [_loss_through_hooks(model, images, query, quadratic_answer)]
    for steps in (1, 5, 10, 20):
        answer = feature_map_contributions(model, images, **query, mode="sgd", steps=steps)
        assert answer.region == quadratic_answer.region and answer.params["steps_run"] == steps
        losses.append(_loss_through_hooks(model, images, query, answer))
    tolerance = 1e-5 * losses[0]  # the replay and the hook-gated pass round differently
    assert all(later <= earlier + tolerance for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - tolerance, losses  # on this query the refinement does find a lower loss
