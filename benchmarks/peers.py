"""The generative models beside their reference peers: same data, same machine, same wall time.

- ``vae``: the VAE of pytorch/examples (``vae/main.py``): MLP encoder 784-400-(20, 20) and
  decoder 20-400-784, ReLU, a Bernoulli likelihood on the grey levels (binary cross-entropy
  summed over pixels), Adam at 1e-3, batches of 128.
- ``gan``: the GAN of Lightning's domain templates (``generative_adversarial_net.py``): MLP
  generator 100-128-256-512-1024-784 with BatchNorm1d (eps 0.8), LeakyReLU 0.2 and tanh, MLP
  discriminator 784-512-256-1, binary cross-entropy on logits, one generator then one
  discriminator step per batch on the same noise, Adam at 2e-4 (0.5, 0.999), batches of 32 (its
  data module's default), pixels scaled to [-1, 1] (its ``normalize`` option, which matches the
  tanh).

Each peer is re-implemented from those published settings, trained on the model's prepared
training split for as long as the model's own training took (``train_time_s`` of
``metrics/<name>.json``, or ``--seconds``), then scored by the project's own evaluation: the
same sample scores (FID, KID, Inception Score, precision and recall on the classifier's
features, with the real-vs-real floor) and, for the VAE, the test negative ELBO and the IWAE
bound with ``models.vae.iwae``'s settings. The VAE's floor is the entropy of the grey levels
as soft targets: the negative ELBO of a perfect model under this likelihood.

    make bench-peers                               # vae and gan, each for its model's time
    python benchmarks/peers.py --models vae --seconds 60
    python benchmarks/peers.py --tiny              # two seconds each: the plumbing, for CI

Writes ``reports/bench/peers.json`` and prints one table per model: ours, the peer's, the floor.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipeline"))
import common  # noqa: E402

from docs import peer_table  # noqa: E402

PEERS = ("vae", "gan")
ROWS = {
    "vae": ("test/nelbo", "test/iwae_nll", "fid", "kid", "inception_score", "precision", "recall"),
    "gan": ("fid", "kid", "inception_score", "precision", "recall"),
}
LOWER_IS_BETTER = {"test/nelbo", "test/iwae_nll", "fid", "kid"}


class ExamplesVAE(nn.Module):
    """pytorch/examples' VAE, with the interface the VAE's evaluation reads (``net.encode``,
    ``net.decode`` to logits, ``reconstruction_nll``, ``terms``, ``sample``)."""

    def __init__(self, shape: tuple[int, int, int], latent: int = 20, hidden: int = 400) -> None:
        super().__init__()
        self.shape, self.latent = shape, latent
        pixels = shape[0] * shape[1] * shape[2]
        self.net = nn.Module()
        self.net.fc1, self.net.fc2 = nn.Linear(pixels, hidden), nn.Linear(hidden, 2 * latent)
        self.net.fc3, self.net.fc4 = nn.Linear(latent, hidden), nn.Linear(hidden, pixels)
        self.net.encode = self._encode
        self.net.decode = self._decode

    @property
    def device(self) -> torch.device:
        return self.net.fc1.weight.device

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.fc2(F.relu(self.net.fc1(x.flatten(1)))).chunk(2, dim=-1)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.fc4(F.relu(self.net.fc3(z))).view(-1, *self.shape)

    def reconstruction_nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        nll = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="none")
        return nll.flatten(1).sum(-1)

    def terms(self, x: torch.Tensor):
        mu, logvar = self.net.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)
        return self.reconstruction_nll(self.net.decode(z), x), kl, mu

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        recon, kl, _ = self.terms(x)
        return (recon + kl).mean()

    @torch.no_grad()
    def sample(self, n: int, generator=None, check: bool = True) -> torch.Tensor:
        z = torch.randn(n, self.latent, generator=generator).to(self.device)
        return self.net.decode(z).sigmoid()


class LightningExampleGAN(nn.Module):
    """The GAN of Lightning's domain templates; ``sample`` gives images in [0, 1]."""

    def __init__(self, shape: tuple[int, int, int], latent: int = 100) -> None:
        super().__init__()
        self.shape, self.latent = shape, latent
        pixels = shape[0] * shape[1] * shape[2]
        layers, width = [nn.Linear(latent, 128), nn.LeakyReLU(0.2)], 128
        for out in (256, 512, 1024):
            layers += [nn.Linear(width, out), nn.BatchNorm1d(out, 0.8), nn.LeakyReLU(0.2)]
            width = out
        self.generator = nn.Sequential(*layers, nn.Linear(width, pixels), nn.Tanh())
        self.discriminator = nn.Sequential(
            nn.Linear(pixels, 512), nn.LeakyReLU(0.2), nn.Linear(512, 256), nn.LeakyReLU(0.2),
            nn.Linear(256, 1),
        )  # fmt: skip
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))

    @property
    def device(self) -> torch.device:
        return self.generator[0].weight.device

    def step(self, x: torch.Tensor) -> None:
        """One generator step, then one discriminator step, on the same noise."""
        x = x.flatten(1)
        z = torch.randn(len(x), self.latent, device=x.device)
        ones, zeros = x.new_ones(len(x), 1), x.new_zeros(len(x), 1)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(self.generator(z)), ones)
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        fake = self.generator(z).detach()
        d_loss = (
            F.binary_cross_entropy_with_logits(self.discriminator(x), ones)
            + F.binary_cross_entropy_with_logits(self.discriminator(fake), zeros)
        ) / 2
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()

    @torch.no_grad()
    def sample(self, n: int, generator=None, check: bool = True) -> torch.Tensor:
        z = torch.randn(n, self.latent, generator=generator).to(self.device)
        return (self.generator(z).view(-1, *self.shape) + 1) / 2


def train_for(peer: nn.Module, images: torch.Tensor, batch: int, seconds: float, name: str):
    """Train on uint8 ``images`` in shuffled batches until ``seconds`` have passed.

    Returns:
        ``(seconds taken, epochs seen, steps)``.
    """
    scale = (lambda x: x / 127.5 - 1) if name == "gan" else (lambda x: x / 255.0)
    opt = torch.optim.Adam(peer.parameters(), lr=1e-3) if name == "vae" else None
    start = last = time.monotonic()
    epochs = steps = 0
    peer.train()
    while True:  # whole epochs of a fresh permutation, until the time is up
        for idx in torch.randperm(len(images)).split(batch):
            x = scale(images[idx].float())
            if opt is None:
                peer.step(x)
            else:
                loss = peer.loss(x)
                opt.zero_grad()
                loss.backward()
                opt.step()
            steps += 1
            now = time.monotonic()
            if now - last >= 10:
                print(f"peers: {name}: {now - start:.0f}/{seconds:.0f} s, epoch {epochs + 1}, "
                      f"step {steps}", file=sys.stderr, flush=True)  # fmt: skip
                last = now
            if now - start >= seconds:
                peer.eval()
                return round(now - start, 1), round(steps * batch / len(images), 2), steps
        epochs += 1


def evaluate_peer(name: str, peer: nn.Module, section, dm, seed: int) -> dict:
    from sightline.metrics.generative import score_generator

    out = {}
    if name == "vae":
        from sightline.metrics.vae import iwae_metrics, split_terms

        recon, kl, _, labels = split_terms(peer, dm, seed)
        out["test/nelbo"] = round(float((recon + kl).mean()), 4)
        out |= iwae_metrics(peer, dm, recon + kl, labels, section.iwae, seed)
        x = dm.split("test").tensors[0].float() / 255.0
        entropy = F.binary_cross_entropy(x, x, reduction="none").flatten(1).sum(-1)
        out["floor/nelbo"] = round(float(entropy.mean()), 4)
    scores, _ = score_generator(peer, dm, section.upstream, section.score, seed)
    return out | scores


def floors(name: str, peer: dict) -> dict:
    """The floor of each row: the soft targets' entropy for the NELBO, the real-vs-real scores
    for the sample scores, none for the IWAE bound (its floor is the same entropy)."""
    return {
        k: peer.get("floor/nelbo") if k == "test/nelbo" else peer["real_floor"].get(k)
        for k in ROWS[name]
    }


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(PEERS), help=f"of {', '.join(PEERS)}")
    p.add_argument("--seconds", type=float, help="training time (default: the model's own)")
    p.add_argument("--tiny", action="store_true", help="two seconds of training each (CI)")
    p.add_argument("--out", type=Path, default=common.REPORTS / "bench" / "peers.json")
    args = p.parse_args()

    from sightline.errors import InputError
    from sightline.io import atomic_write_text
    from sightline.registry import get_model

    unknown = [m for m in args.models if m not in PEERS]
    if unknown:
        raise InputError(f"--models: no peer for {', '.join(unknown)} (peers: {', '.join(PEERS)})")
    params, sections = common.load_all(args.params)
    report = {}
    for name in args.models:
        section = sections[name]
        ours_file = common.METRICS / f"{name}.json"
        ours = json.loads(ours_file.read_text()) if ours_file.is_file() else {}
        seconds = 2.0 if args.tiny else args.seconds or ours.get("train_time_s")
        if seconds is None:
            raise InputError(
                f"{ours_file}: missing; run `dvc repro evaluate@{name}` or give --seconds"
            )
        torch.manual_seed(params.seed)
        dm = get_model(name).datamodule(
            section, common.PREPARED / section.data.dataset, params.seed
        )
        shape = tuple(dm.split("train").tensors[0].shape[1:])
        peer = ExamplesVAE(shape) if name == "vae" else LightningExampleGAN(shape)
        batch = 128 if name == "vae" else 32
        print(f"peers: {name}: training the peer for {seconds:.0f} s ...", flush=True)
        took, epochs, steps = train_for(peer, dm.split("train").tensors[0], batch, seconds, name)
        scores = evaluate_peer(name, peer, section, dm, params.seed)
        scores |= {"train_time_s": took, "epochs": epochs, "steps": steps}
        report[name] = {
            "rows": list(ROWS[name]),
            "lower_is_better": [k for k in ROWS[name] if k in LOWER_IS_BETTER],
            "peer": scores,
            "floor": floors(name, scores),
            "ours_at_run": {k: ours.get(k) for k in (*ROWS[name], "train_time_s")},
        }
        print(peer_table(name, ours, report[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"peers: -> {args.out}")


if __name__ == "__main__":
    common.run(main)
