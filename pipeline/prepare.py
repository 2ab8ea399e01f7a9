"""Stage ``prepare@<dataset>``: raw images or emails -> data/prepared/<dataset>/ (+ meta.json)."""

from __future__ import annotations

import common


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("dataset", help="a key of `datasets` in params.yaml")
    args = p.parse_args()
    params = common.load(args.params)

    from sightline.errors import ConfigError
    from sightline.prepare import prepare_dataset

    if args.dataset not in params.datasets:
        raise ConfigError(f"{args.params}: datasets.{args.dataset}: section missing")
    out = common.PREPARED / args.dataset
    meta = prepare_dataset(
        args.dataset, params.datasets[args.dataset], params.seed, out, common.DOWNLOADS
    )
    counts = {s: c["total"] for s, c in meta["counts"].items()}
    shape = f", shape {meta['shape']}" if "shape" in meta else ""
    print(
        f"prepared {args.dataset} from {meta['source']}: {counts}{shape}, "
        f"skipped {meta['skipped']} unreadable files (list in {out / 'report.json'})"
    )


if __name__ == "__main__":
    common.run(main)
