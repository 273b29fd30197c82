"""FGSM, PGD and MI-FGSM against an independent step-by-step re-computation of their update rules."""

import pytest
import torch
from torch import nn

from tensorboard_plugin_aevis.attacks import fgsm, mi_fgsm, pgd
from tensorboard_plugin_aevis.models import ClassifierWrapper


def tiny_classifier(seed: int = 0) -> ClassifierWrapper:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5),
    )
    with torch.no_grad():  # non-trivial running statistics so train and eval modes differ
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    return ClassifierWrapper(net, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3]).eval()


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 8, 8, generator=g)


def reference_gradient(model, x_single, cls):
    """Gradient of the cross-entropy of ``cls`` for one image, via loss.backward() on a fresh leaf."""
    leaf = x_single.clone().unsqueeze(0).requires_grad_(True)
    logits = model(leaf)
    loss = -torch.log_softmax(logits, dim=1)[0, cls]
    loss.backward()
    return leaf.grad[0]


def reference_mi_fgsm(model, x, cls, targeted, eps, steps, mu, alpha):
    """MI-FGSM for one image, written from the update rule in docs/method.md "Attacks"."""
    x0 = x.clone()
    adv = x.clone()
    g = torch.zeros_like(x)
    for _ in range(steps):
        grad = reference_gradient(model, adv, cls)
        g = mu * g + grad / grad.abs().mean()
        step = -alpha * g.sign() if targeted else alpha * g.sign()
        adv = adv + step
        adv = torch.where(adv > x0 + eps, x0 + eps, adv)
        adv = torch.where(adv < x0 - eps, x0 - eps, adv)
        adv = torch.clamp(adv, 0, 1)
    return adv


@pytest.mark.parametrize("targeted", [False, True])
def test_mi_fgsm_matches_the_update_rule_per_example(targeted):
    model = tiny_classifier()
    x = images()
    with torch.no_grad():
        pred = model(x).argmax(1)
    classes = (pred + 1) % 5 if targeted else pred
    eps, steps, mu = 0.1, 4, 0.7
    if targeted:
        adv = mi_fgsm(model, x, target=classes, eps=eps, steps=steps, mu=mu)
    else:
        adv = mi_fgsm(model, x, eps=eps, steps=steps, mu=mu)  # label defaults to the prediction
    for b in range(x.shape[0]):
        expected = reference_mi_fgsm(model, x[b], int(classes[b]), targeted, eps, steps, mu, eps / steps)
        torch.testing.assert_close(adv[b], expected, atol=1e-6, rtol=0)


def test_fgsm_and_pgd_match_their_update_rules():
    model = tiny_classifier()
    x = images()
    labels = torch.tensor([0, 3, 4])
    eps = 0.05
    adv = fgsm(model, x, label=labels, eps=eps)
    for b in range(3):
        grad = reference_gradient(model, x[b], int(labels[b]))
        torch.testing.assert_close(adv[b], torch.clamp(x[b] + eps * grad.sign(), 0, 1), atol=1e-6, rtol=0)

    steps, alpha = 3, 0.02
    adv = pgd(model, x, label=labels, eps=eps, steps=steps, alpha=alpha, generator=torch.Generator().manual_seed(7))
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(7))
    for b in range(3):
        expected = torch.clamp(x[b] + (noise[b] * 2 - 1) * eps, 0, 1)
        for _ in range(steps):
            expected = expected + alpha * reference_gradient(model, expected, int(labels[b])).sign()
            expected = torch.clamp(torch.maximum(torch.minimum(expected, x[b] + eps), x[b] - eps), 0, 1)
        torch.testing.assert_close(adv[b], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("attack", [fgsm, pgd, mi_fgsm])
def test_eps_ball_and_pixel_range_are_respected(attack):
    model = tiny_classifier()
    x = images(4)
    x[0] = 0.0  # at the box edges the [0, 1] clip binds
    x[1] = 1.0
    eps = 0.03
    adv = attack(model, x, eps=eps)
    assert adv.shape == x.shape
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > eps / 2  # it did move


def test_targeted_attack_lowers_target_loss_and_untargeted_raises_source_loss():
    model = tiny_classifier()
    x = images(4)
    with torch.no_grad():
        pred = model(x).argmax(1)
    target = (pred + 2) % 5
    ce = nn.CrossEntropyLoss(reduction="none")
    adv_t = mi_fgsm(model, x, target=target, eps=0.2, steps=10)
    adv_u = mi_fgsm(model, x, eps=0.2, steps=10)
    with torch.no_grad():
        assert (ce(model(adv_t), target) < ce(model(x), target)).all()
        assert (ce(model(adv_u), pred) > ce(model(x), pred)).all()


def test_model_is_left_unchanged():
    model = tiny_classifier()
    model.train()  # a user model in training mode: attacked in eval mode, mode restored
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images()
    model.eval()
    with torch.no_grad():
        logits_before = model(x)
    model.train()
    eval_attack = mi_fgsm(model, x, eps=0.05, steps=2)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), logits_before)
    # the attack ran in eval mode: identical to attacking the eval-mode model
    assert torch.equal(eval_attack, mi_fgsm(model, x, eps=0.05, steps=2))


def test_bad_input_is_named():
    model = tiny_classifier()
    x = images()
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel space"):
        mi_fgsm(model, x * 3)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fgsm(model, bad)
    with pytest.raises(ValueError, match="batch dimension"):
        pgd(model, x[0])
    with pytest.raises(ValueError, match="out of range"):
        mi_fgsm(model, x, target=9)
    with pytest.raises(ValueError, match="one class index per image"):
        mi_fgsm(model, x, label=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer class indices"):
        mi_fgsm(model, x, label=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="eps"):
        fgsm(model, x, eps=16)
