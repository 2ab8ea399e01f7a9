"""``make pull``: after ``dvc pull``, put the workspace's Bento (``bento/<name>.bento``, with its
models) into the local BentoML store, so ``make serve`` serves it with no training.

Nothing happens when the store already holds that Bento version.
"""

from __future__ import annotations

import json

import common


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.parse_args()

    from sightline.errors import CheckpointError

    summary = common.BENTO / "bento.json"
    if not summary.is_file():
        raise CheckpointError(f"{summary}: missing; run `dvc pull` (or `dvc repro package`)")
    bento = json.loads(summary.read_text())
    archive = common.BENTO / f"{bento['bento'].split(':')[0]}.bento"

    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.bentos.get(bento["bento"])
        print(f"{bento['bento']}: already in the BentoML store")
    except NotFound:
        if not archive.is_file():
            raise CheckpointError(f"{archive}: missing; run `dvc pull`") from None
        try:
            bentoml.bentos.import_bento(str(archive.resolve()))
        except Exception as err:  # a truncated or foreign archive: one line, naming it
            raise CheckpointError(
                f"{archive}: not importable ({type(err).__name__}: {err})"
            ) from None
        print(
            f"{bento['bento']}: imported from {archive}, with models {', '.join(bento['models'].values())}"
        )
    print("serve it: make serve")


if __name__ == "__main__":
    common.run(main)
