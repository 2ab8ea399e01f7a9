"""``make experiment PROFILE=params/cifar10.yaml [MODELS="classifier"]``: one DVC experiment
from a params profile.

A profile is a YAML file shaped like ``params.yaml`` holding only the keys it changes. This
command checks the profile against ``params.yaml`` (every key known, every value valid, and
every model that will run scored by an upstream model trained on the same dataset), then runs

    dvc exp run -n <name> -S <key>=<value> ... [evaluate@<model> ...]

printing that command first. With ``--models``, only those models' keys are applied and only
their stages (and what they need) run: ``--models classifier`` trains and scores the classifier
without re-training the generative models that read it. Problems are one line, before DVC
starts.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import common
from sweep import yaml_value

TOP_KEYS = ("seed", "datasets", "models")


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(leaves(value, path + "."))
        else:
            out[path] = value
    return out


def read_profile(path: Path) -> dict:
    import yaml

    from sightline.errors import ConfigError

    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(
            f"{path}: not a readable YAML file ({str(err).splitlines()[0]})"
        ) from None
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{path}: expected a mapping of params.yaml keys to change")
    unknown = [key for key in tree if key not in TOP_KEYS]
    if unknown:
        raise ConfigError(
            f"{path}: {unknown[0]}: not a key a profile may change ({', '.join(TOP_KEYS)})"
        )
    return tree


def select(values: dict[str, object], models: list[str] | None) -> dict[str, object]:
    """The profile's values that apply: all, or with ``models`` only theirs (and datasets, seed)."""
    if models is None:
        return values
    return {
        path: value
        for path, value in values.items()
        if not path.startswith("models.") or path.split(".")[1] in models
    }


def check(raw: dict, values: dict[str, object], models: list[str] | None, source: str) -> list[str]:
    """Validate params.yaml with ``values`` set; return the models that will run.

    Raises ``ConfigError`` naming the key: an unknown key or bad value, a ``--models`` name
    with no section, or a model that will run whose upstream model trains on other images.
    """
    from sightline.errors import ConfigError
    from sightline.params import parse_params, with_values

    for path in values:
        node = raw
        for part in path.split(".")[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or path.split(".")[-1] not in node:
            raise ConfigError(f"{source}: {path}: params.yaml has no such key")
    merged = with_values(raw, values)
    _, sections = parse_params(merged, f"params.yaml with {source}")
    for name in models or []:
        if name not in sections:
            raise ConfigError(
                f"--models {name}: no models.{name} in params.yaml ({', '.join(sections)})"
            )
    running = models or list(sections)
    for name in running:
        upstream = sections[name].upstream or ""
        parent = upstream.removeprefix("models/")
        if not upstream.startswith("models/") or parent not in sections:
            continue
        mine = getattr(sections[name].data, "dataset", None)
        theirs = getattr(sections[parent].data, "dataset", None)
        if mine is not None and theirs is not None and mine != theirs:
            fix = f"set models.{name}.data.dataset: {theirs} in {source}"
            if models is not None and parent not in models:
                fix = f"add {parent} to --models, or leave {name} out"
            raise ConfigError(
                f"{source}: models.{name}.data.dataset would be {mine}, but its upstream "
                f"{upstream} trains on {theirs}: {fix}"
            )
    return running


def command(
    name: str, values: dict[str, object], models: list[str] | None, queue: bool
) -> list[str]:
    cmd = ["dvc", "exp", "run", "-n", name, *(["--queue"] if queue else [])]
    for path, value in values.items():
        cmd += ["-S", f"{path}={yaml_value(value)}"]
    return cmd + [f"evaluate@{m}" for m in models or []]


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("profile", type=Path, help="YAML file of params.yaml keys to change")
    p.add_argument(
        "--models", nargs="+", help="run only these models (default: the whole pipeline)"
    )
    p.add_argument("-n", "--name", help="experiment name (default: the profile's file name)")
    p.add_argument("--queue", action="store_true", help="queue it (dvc queue start runs it)")
    p.add_argument("--dry-run", action="store_true", help="check and print the command only")
    args = p.parse_args()
    from sightline.config import read_params

    raw = read_params(args.params)
    values = select(leaves(read_profile(args.profile)), args.models)
    check(raw, values, args.models, str(args.profile))
    name = args.name or "-".join([args.profile.stem, *(args.models or [])])
    cmd = command(name, values, args.models, args.queue)
    print(shlex.join(cmd), flush=True)
    if not args.dry_run:
        sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    common.run(main)
