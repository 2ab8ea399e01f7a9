"""Adversarial evaluation and training: the attacks stay inside their budget, robust accuracy
falls with epsilon, and adversarial training feeds the network attacked batches."""

from __future__ import annotations

import torch
from conftest import tiny_section

from sightline.registry import get_model
from sightline.robust import attack, robust_accuracy


def _linear_model(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.rand(32, 3, 8, 8)
    with torch.no_grad():
        y = net(x).argmax(-1)  # labels the model gets right: clean accuracy 1
    return net, x, y


def test_attacks_stay_in_the_ball_and_the_pixel_range():
    net, x, y = _linear_model()
    for steps in (1, 5):
        adv = attack(net, x, y, 4 / 255, steps)
        assert (adv - x).abs().max() <= 4 / 255 + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1


def test_robust_accuracy_falls_with_epsilon():
    net, x, y = _linear_model()
    r = robust_accuracy(net, x, y, [1 / 255, 8 / 255, 64 / 255], steps=10, batch_size=16)
    assert r["clean"] == 1.0
    for name in ("fgsm", "pgd"):
        values = [r[name][e] for e in sorted(r[name])]
        assert values == sorted(values, reverse=True) and values[-1] < values[0]
    broken = r["radius"] > 0
    assert (r["predicted"][broken] != y[broken]).all()


def test_adversarial_training_attacks_each_batch(prepared_fashion):
    spec = get_model("classifier")
    section = tiny_section("classifier", model={"adversarial": {"eps": 25.5, "steps": 2}})
    dm = spec.datamodule(section, prepared_fashion, 0)
    module = spec.module(**spec.module_kwargs(section, dm)).eval()  # fixed BN statistics
    x, y = next(iter(dm.train_dataloader()))
    x = dm.preprocess.normalize(x)
    adv = module.adversarial_batch(x, y)
    std = torch.tensor(dm.preprocess.std).view(1, -1, 1, 1)
    assert (adv - x).abs().mul(std).max() <= 25.5 / 255 + 1e-5  # within eps in pixel units
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(module(adv), y) > loss(module(x), y)
