"""The VAE and the DCGAN: shapes, loss terms, manual optimisation, seeded sampling, scoring."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL, fit_steps, fixed_batch_losses, tiny_section
from safetensors.torch import load_file
from torch.nn.utils import parametrize

from sightline.artifacts import CKPT_FILE, WEIGHTS_FILE
from sightline.errors import CheckpointError, ConfigError, InputError
from sightline.evaluation import evaluate
from sightline.inference import load_module
from sightline.metrics.generative import precision_recall
from sightline.metrics.vae import iwae_nll
from sightline.models.generative import SampleScorer, load_classifier
from sightline.models.vae import kl_divergence, reparameterize
from sightline.params import parse_params
from sightline.registry import get_model
from sightline.training import train

GENERATIVE = ["vae", "gan"]


def build(name: str, data_dir, **model):
    spec = get_model(name)
    section = tiny_section(name, model=model)
    dm = spec.datamodule(section, data_dir, 0)
    return spec.module(**spec.module_kwargs(section, dm)), dm


def first_batch(dm) -> torch.Tensor:
    x, _ = next(iter(dm.train_dataloader()))
    return dm.preprocess.normalize(x)


@pytest.mark.parametrize(
    "fixture,shape", [("prepared_fashion", (1, 28, 28)), ("prepared_cifar", (3, 32, 32))]
)
def test_vae_shapes_and_pixel_range(fixture, shape, request):
    module, dm = build("vae", request.getfixturevalue(fixture))
    x = first_batch(dm)
    assert x.shape[1:] == shape and x.min() >= 0 and x.max() <= 1  # the likelihood's support
    logits, mu, logvar = module.net(x)
    assert logits.shape == x.shape
    assert mu.shape == logvar.shape == (len(x), module.hparams.latent_dim)
    samples = module.sample(5)
    assert samples.shape == (5, *shape) and samples.min() >= 0 and samples.max() <= 1
    assert module.interpolate(x[0], x[1], steps=7).shape == (7, *shape)


@pytest.mark.parametrize(
    "fixture,shape", [("prepared_fashion", (1, 28, 28)), ("prepared_cifar", (3, 32, 32))]
)
def test_gan_shapes_and_pixel_range(fixture, shape, request):
    module, dm = build("gan", request.getfixturevalue(fixture))
    x = first_batch(dm)
    assert x.shape[1:] == shape and x.min() >= -1 and x.max() <= 1  # tanh's range
    fake = module(torch.randn(6, module.hparams.latent_dim))
    assert fake.shape == (6, *shape) and fake.abs().max() <= 1
    assert module.discriminator(x).shape == (len(x),)
    assert module.sample(3).shape == (3, *shape)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(4, 8)
    assert torch.allclose(kl_divergence(zeros, zeros), torch.zeros(4))
    assert (kl_divergence(torch.full((4, 8), 0.5), zeros) > 0).all()
    assert (kl_divergence(zeros, torch.full((4, 8), -1.0)) > 0).all()
    # closed form for one dimension: 0.5 * (s^2 + m^2 - 1 - ln s^2)
    m, lv = torch.tensor([[1.5]]), torch.tensor([[0.7]])
    expected = 0.5 * (torch.exp(lv) + m**2 - 1 - lv)
    assert torch.allclose(kl_divergence(m, lv), expected.squeeze(-1))


def test_reparameterisation_gives_gradients_to_mu_and_sigma():
    mu = torch.zeros(3, 5, requires_grad=True)
    logvar = torch.zeros(3, 5, requires_grad=True)
    torch.manual_seed(0)
    (reparameterize(mu, logvar) ** 2).sum().backward()
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
def test_vae_loss_is_recon_plus_beta_kl(likelihood, prepared_fashion):
    module, dm = build("vae", prepared_fashion, beta=2.5, likelihood=likelihood)
    x = first_batch(dm)
    module.log = lambda *a, **k: None  # outside a Trainer
    torch.manual_seed(1)
    loss = module._common_step((x, None), "train")
    torch.manual_seed(1)
    recon, kl, _ = module.terms(x)
    assert torch.allclose(loss, (recon + 2.5 * kl).mean())
    assert recon.shape == kl.shape == (len(x),) and (kl >= 0).all()


def test_free_bits_floor_each_latent_dimension_in_training_only(prepared_fashion):
    module, dm = build("vae", prepared_fashion, free_bits=1000.0)  # above any dimension's KL
    x = first_batch(dm)
    module.log = lambda *a, **k: None
    module.eval()  # the same posterior sample stats in both calls (BatchNorm)
    torch.manual_seed(1)
    train_loss = module._common_step((x, None), "train")
    torch.manual_seed(1)
    val_loss = module._common_step((x, None), "val")
    torch.manual_seed(1)
    recon, kl, _ = module.terms(x)
    dims = module.hparams.latent_dim
    assert torch.allclose(train_loss, recon.mean() + dims * 1000.0)  # every dimension floored
    assert torch.allclose(val_loss, (recon + kl).mean())  # the logged bound is the true one


def test_kl_warmup_ramps_the_weight_to_beta(prepared_fashion):
    module, _ = build("vae", prepared_fashion, beta=2.0, kl_warmup_epochs=2.0)
    module._trainer = SimpleNamespace(current_epoch=0, num_training_batches=10)
    ramp = [module.kl_weight(i) for i in (0, 5)]
    module._trainer.current_epoch = 1
    ramp += [module.kl_weight(0), module.kl_weight(5)]
    module._trainer.current_epoch = 3
    ramp.append(module.kl_weight(0))
    assert ramp == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


def test_residual_blocks_keep_shapes_and_add_depth(prepared_fashion):
    plain, dm = build("vae", prepared_fashion)
    deep, _ = build("vae", prepared_fashion, blocks=2)
    x = first_batch(dm)
    logits, mu, _ = deep.net(x)
    assert logits.shape == x.shape and mu.shape == (len(x), deep.hparams.latent_dim)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(deep) > count(plain)


def test_iwae_bound_is_exact_when_the_posterior_is_the_prior(prepared_fashion):
    # q(z | x) = N(0, I) = p(z) and logits that ignore z: every importance weight is p(x | z),
    # so the bound is -log p(x | z) whatever the samples, and equals the ELBO.
    module, dm = build("vae", prepared_fashion)
    module.eval()
    torch.nn.init.zeros_(module.net.to_stats.weight)
    torch.nn.init.zeros_(module.net.to_stats.bias)
    torch.nn.init.zeros_(module.net.decoder[-1].weight)
    x = first_batch(dm)[:4]
    with torch.no_grad():
        recon, kl, _ = module.terms(x)
        bound = iwae_nll(module, x, 7, torch.Generator().manual_seed(0))
    assert torch.allclose(kl, torch.zeros(4)) and torch.allclose(bound, recon, rtol=1e-5)


def test_iwae_bound_tightens_with_more_samples(prepared_fashion):
    torch.manual_seed(0)
    module, dm = build("vae", prepared_fashion)
    x = first_batch(dm)
    opt = torch.optim.Adam(module.parameters(), lr=5e-3)
    fixed_batch_losses(lambda: sum(t.mean() for t in module.terms(x)[:2]), opt, 60)
    module.eval()  # a posterior that is no longer the prior, so samples matter
    with torch.no_grad():
        recon, kl, _ = module.terms(x)
        bounds = [
            iwae_nll(module, x, k, torch.Generator().manual_seed(0)).mean() for k in (1, 10, 1500)
        ]
    assert bounds[2] < bounds[1] < bounds[0]
    assert bounds[2] < (recon + kl).mean()  # below the ELBO, which it bounds from below in log p


def test_vae_loss_goes_down_on_a_fixed_batch(prepared_fashion):
    torch.manual_seed(0)
    module, dm = build("vae", prepared_fashion)
    x = first_batch(dm)
    opt = torch.optim.Adam(module.parameters(), lr=5e-3)

    def nelbo():
        recon, kl, _ = module.terms(x)
        return (recon + kl).mean()

    losses = fixed_batch_losses(nelbo, opt, 60)
    assert losses[-1] < 0.7 * losses[0]


def test_one_gan_step_changes_generator_and_discriminator(prepared_fashion):
    L.seed_everything(0, verbose=False)
    module, dm = build("gan", prepared_fashion)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = fit_steps(module, dm, 2)
    after = module.state_dict()
    for part in ("generator.", "discriminator."):
        weights = [k for k in before if k.startswith(part) and k.endswith("weight")]
        assert any(not torch.equal(before[k], after[k]) for k in weights), part
    assert trainer.global_step == 2  # one discriminator step + one generator step


SNGAN = {"discriminator_norm": "spectral", "loss": "hinge"}


def test_spectral_discriminator_has_no_batchnorm_and_unit_spectral_norm(prepared_cifar):
    torch.manual_seed(0)
    module, dm = build("gan", prepared_cifar, **SNGAN)
    d = module.discriminator
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    layers = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(layers) == 3 and all(parametrize.is_parametrized(m, "weight") for m in layers)
    x = first_batch(dm) * 2 - 1
    d.train()
    for _ in range(30):  # each training-mode call runs one power iteration per layer
        d(x)
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)
    default, _ = build("gan", prepared_cifar)  # today's: BatchNorm after every conv but the first
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in default.discriminator.modules()) == 1


@pytest.mark.parametrize("loss", ["bce", "hinge"])
def test_gan_losses_on_known_logits(loss, prepared_fashion):
    module, _ = build("gan", prepared_fashion, loss=loss)
    real, fake = torch.tensor([2.0, -0.5]), torch.tensor([-2.0, 0.5])
    if loss == "hinge":  # mean(relu(1 - real)) + mean(relu(1 + fake)); -mean(fake)
        d_expected, g_expected = (0.0 + 1.5) / 2 + (0.0 + 1.5) / 2, 0.75
    else:  # -log sigmoid(real) - log(1 - sigmoid(fake)), averaged; -log sigmoid(fake)
        sp = F.softplus
        d_expected = (sp(-real).mean() + sp(fake).mean()).item()
        g_expected = sp(-fake).mean().item()
    assert module.d_loss(real, fake).item() == pytest.approx(d_expected)
    assert module.g_loss(fake).item() == pytest.approx(g_expected)


def test_sngan_with_ema_trains_exports_the_average_and_reloads_it(
    prepared_fashion, tiny_classifier, tmp_path
):
    """Spectral norm, hinge loss and an EMA of the weights: two epochs train and are scored,
    the checkpoint and the exported weights hold the average (the raw weights beside it), and
    the model read back from the export is rebuilt with the options and holds the average."""
    model = {**TINY_MODEL["gan"], **SNGAN, "ema_decay": 0.9}
    section = tiny_section("gan", upstream=tiny_classifier, model=model, max_epochs=2)
    info = train("gan", section, 0, prepared_fashion, tmp_path / "m", tmp_path / "run", None)
    assert info["best_val/fid"] > 0 and info["epochs"] == 2
    best = torch.load(tmp_path / "m" / CKPT_FILE, map_location="cpu", weights_only=True)
    average, raw = best["state_dict"], best["current_model_state"]
    weights = load_file(tmp_path / "m" / WEIGHTS_FILE)
    assert all(torch.equal(weights[k], average[k]) for k in weights)
    key = "generator.project.0.weight"
    assert not torch.equal(average[key], raw[key])
    assert any("parametrizations.weight.original" in k for k in weights)
    module = load_module(tmp_path / "m", "gan", "cpu")
    assert module.hparams.discriminator_norm == "spectral" and module.hparams.loss == "hinge"
    assert torch.equal(module.generator.project[0].weight, average[key])
    metrics = evaluate("gan", section, 0, tmp_path / "m", prepared_fashion, tmp_path / "report")
    assert metrics["fid"] > 0 and metrics["classes_covered"] >= 1


def test_conditional_gan_draws_the_classes_asked_for(prepared_fashion):
    """The label reaches both networks: with the same noise, other labels give other images
    and other discriminator logits; wrong labels are clear errors; one step trains both."""
    L.seed_everything(0, verbose=False)
    module, dm = build("gan", prepared_fashion, conditional=True)
    module.eval()
    z = torch.randn(4, module.hparams.latent_dim)
    a, b = module(z, torch.zeros(4, dtype=torch.long)), module(z, torch.ones(4, dtype=torch.long))
    assert a.shape == b.shape and not torch.allclose(a, b)
    assert not torch.allclose(
        module.discriminator(a, torch.zeros(4, dtype=torch.long)),
        module.discriminator(a, torch.full((4,), 2)),
    )
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    same = module.sample(5, g(), labels=torch.full((5,), 7))
    assert torch.equal(same, module.sample(5, g(), labels=torch.full((5,), 7)))
    assert not torch.equal(same, module.sample(5, g(), labels=torch.full((5,), 8)))
    assert module.sample(5, g()).shape == same.shape  # labels drawn from the generator
    for bad in (torch.full((5,), 10), torch.full((5,), -1), torch.zeros(4, dtype=torch.long)):
        with pytest.raises(InputError, match="class indices"):
            module.sample(5, g(), labels=bad)
    plain, _ = build("gan", prepared_fashion)
    with pytest.raises(InputError, match="not class-conditional"):
        plain.sample(2, labels=torch.zeros(2, dtype=torch.long))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    fit_steps(module.train(), dm, 2)
    for part in ("generator.embed.", "discriminator.embed."):
        assert any(
            not torch.equal(before[k], v)
            for k, v in module.state_dict().items()
            if k.startswith(part)
        ), part


def test_conditional_gan_reports_fid_per_class(prepared_fashion, tiny_classifier, tmp_path):
    model = {**TINY_MODEL["gan"], "conditional": True}
    section = tiny_section("gan", upstream=tiny_classifier, model=model, max_epochs=1)
    train("gan", section, 0, prepared_fashion, tmp_path / "m", tmp_path / "run", None)
    module = load_module(tmp_path / "m", "gan", "cpu")
    assert module.num_classes == 10 and module.hparams.conditional
    metrics = evaluate("gan", section, 0, tmp_path / "m", prepared_fashion, tmp_path / "report")
    per_class = metrics["fid_per_class"]
    assert len(per_class) == 10 and all(v > 0 for v in per_class.values())
    assert metrics["fid_per_class_mean"] == pytest.approx(sum(per_class.values()) / 10, abs=1e-3)


@pytest.mark.parametrize("name", GENERATIVE)
def test_same_seed_same_images(name, prepared_fashion):
    module, _ = build(name, prepared_fashion)
    module.eval()
    a = module.sample(6, torch.Generator().manual_seed(5))
    b = module.sample(6, torch.Generator().manual_seed(5))
    c = module.sample(6, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", GENERATIVE)
@pytest.mark.parametrize("n", [0, -3, 65, 2.5, True])
def test_sample_counts_out_of_range_are_clear_errors(name, n, prepared_fashion):
    module, _ = build(name, prepared_fashion)  # tiny max_samples = 64
    with pytest.raises(InputError, match="number of images must be"):
        module.sample(n)


@pytest.mark.parametrize(
    "name,edit,needle",
    [
        ("vae", {"model": {"beta": 0.0}}, "models.vae.model.beta"),
        ("vae", {"model": {"beta": "big"}}, "models.vae.model.beta"),
        ("vae", {"model": {"latent_dim": 0}}, "models.vae.model.latent_dim"),
        ("gan", {"model": {"latent_dim": -1}}, "models.gan.model.latent_dim"),
        ("gan", {"model": {"beta1": 1.5}}, "models.gan.model.beta1"),
        ("gan", {"score": {"samples": 1}}, "models.gan.score.samples"),
    ],
)
def test_bad_generative_params_name_the_key(name, edit, needle):
    section = {"upstream": "models/classifier"}
    for key, value in edit.items():
        section[key] = value
    with pytest.raises(ConfigError) as err:
        parse_params({"seed": 0, "datasets": {}, "models": {name: section}})
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name,key", [("vae", "channels"), ("gan", "generator_channels")])
def test_network_depth_that_does_not_fit_the_image_size_is_named(name, key, prepared_fashion):
    spec = get_model(name)
    section = tiny_section(name, model={key: [8, 8, 8]})  # 28 / 2**3 is not an integer
    dm = spec.datamodule(section, prepared_fashion, 0)
    with pytest.raises(ConfigError, match=rf"models.{name}.model.{key}: .*28x28"):
        spec.module_kwargs(section, dm)


def _noisy(images: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g) * std
    return (images.float() + noise).clamp(0, 255).round().to(torch.uint8)


def test_fid_is_zero_against_itself_and_grows_with_noise(tiny_classifier, prepared_fashion):
    dm = get_model("classifier").datamodule(tiny_section("classifier"), prepared_fashion, 0)
    clf = load_classifier(tiny_classifier, dm.class_names, dm.preprocess, "cpu")
    images = dm.split("train").tensors[0][:200]
    fids = []
    for std in (0.0, 20.0, 60.0):
        scorer = SampleScorer(clf, kid_subsets=5, kid_subset_size=50)
        scorer.update(images, real=True)
        scorer.update(_noisy(images, std, 0) if std else images, real=False)
        fids.append(scorer.compute()["fid"])
    assert abs(fids[0]) < 1e-3
    assert fids[0] < fids[1] < fids[2]


def test_precision_and_recall_separate_fidelity_from_diversity():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(600, 8, generator=g)
    collapsed = 0.1 * torch.randn(600, 8, generator=g)  # inside the real cloud, one mode
    shifted = torch.randn(600, 8, generator=g) + 6.0  # as diverse, elsewhere
    same = torch.randn(600, 8, generator=g)
    pr = {
        name: precision_recall(real, f)
        for name, f in [("c", collapsed), ("s", shifted), ("r", same)]
    }
    assert pr["c"]["precision"] > 0.95 and pr["c"]["recall"] < 0.1
    assert pr["s"]["precision"] < 0.05 and pr["s"]["recall"] < 0.05
    assert pr["r"]["precision"] > 0.6 and pr["r"]["recall"] > 0.6
    assert precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}


def test_scoring_refuses_a_classifier_of_other_images(tiny_classifier, prepared_cifar):
    dm = get_model("classifier").datamodule(tiny_section("classifier"), prepared_cifar, 0)
    with pytest.raises(CheckpointError, match="trained on other images"):
        load_classifier(tiny_classifier, dm.class_names, dm.preprocess, "cpu")
    with pytest.raises(CheckpointError, match="run `dvc repro train@classifier`"):
        load_classifier(tiny_classifier.parent / "missing", dm.class_names, dm.preprocess, "cpu")


@pytest.mark.parametrize("name", GENERATIVE)
def test_train_and_evaluate_write_scores_and_pictures(
    name, prepared_fashion, tiny_classifier, tmp_path
):
    section = tiny_section(name, upstream=tiny_classifier, max_epochs=2)
    info = train(name, section, 0, prepared_fashion, tmp_path / "m", tmp_path / "run", None)
    metrics = evaluate(name, section, 0, tmp_path / "m", prepared_fashion, tmp_path / "report")
    json.dumps(metrics)  # serialisable as metrics/<name>.json
    assert metrics["samples"] == 60 and metrics["fid"] > 0 and metrics["real_floor"]["fid"] >= 0
    assert sum(metrics["class_counts"].values()) == 60
    assert 0 <= metrics["classes_covered"] <= 10 and metrics["inception_score"] >= 1.0
    for side in (metrics, metrics["real_floor"]):
        assert 0 <= side["precision"] <= 1 and 0 <= side["recall"] <= 1
    pictures = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert {"samples.png", "interpolation.png", "class_coverage.png"} <= pictures
    if name == "vae":
        assert metrics["test/nelbo"] == pytest.approx(
            metrics["test/recon"] + metrics["test/kl"], abs=1e-3
        )
        assert 0 <= metrics["latent/active_units"] <= 4
        assert metrics["test/iwae_k"] == 50 and 0 < metrics["test/iwae_n"] <= 20
        assert metrics["test/iwae_nll"] < metrics["test/iwae_nelbo"]
        assert {"reconstructions.png", "latent_space.png"} <= pictures
    else:  # the FID callback chose the best epoch; the fixed noise was saved every epoch
        assert info["best_val/fid"] > 0 and metrics["best_epoch"] in (1, 2)
        assert sorted(p.name for p in (tmp_path / "m/artifacts/progress").iterdir()) == [
            "epoch_000.npy",
            "epoch_001.npy",
        ]
        assert "progress.png" in pictures and metrics["progress_epochs"] == 2
