"""The synthetic world's logs as RecBole atomic files: what `recfound_jax.data.from_logs` turns back into tasks.

    python -m recfound_jax.demo.recbole_export --out DIR [--scale N --seed S]

DIR gets ``synthetic.inter`` (every user's purchases: user_id, item_id, rating, timestamp), ``synthetic.item``
(title, category, brand, color, material and the item-profile text as description) and ``synthetic.user``
(the user-profile text of the user's purchases as profile). A purchase's timestamp is its position in the
user's sequence, so the time order is the world's; rows are written user by user, newest purchase first, so
a converter that trusted the file order would get every sequence backwards.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from recfound_jax import cli
from recfound_jax.demo import synthetic
from recfound_jax.demo import synthetic_world as sw

NAME = "synthetic"


def _write(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    lines = ["\t".join(header)] + ["\t".join(str(value) for value in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_recbole(world: sw.World, out: str | os.PathLike) -> Path:
    """Write ``world``'s users, items and purchases as RecBole atomic files into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inter = [(u.id, it.id, rating, float(t))
             for u in world.users for t, (it, rating) in reversed(list(enumerate(zip(u.purchases, u.ratings))))]
    _write(out / f"{NAME}.inter", ("user_id:token", "item_id:token", "rating:float", "timestamp:float"), inter)
    items = [(it.id, it.title, it.category.name, it.brand, it.color, it.material, synthetic.item_profile_answer(it))
             for it in world.items]
    _write(out / f"{NAME}.item", ("item_id:token", "title:token_seq", "category:token", "brand:token", "color:token",
                                  "material:token", "description:token_seq"), items)
    users = [(u.id, synthetic.user_profile_answer(u.purchases, u.ratings)) for u in world.users]
    _write(out / f"{NAME}.user", ("user_id:token", "profile:token_seq"), users)
    return out


FLAGS = flags.FlagValues()
_OUT = flags.DEFINE_string("out", None, "output directory", required=True, flag_values=FLAGS)
_SCALE = flags.DEFINE_integer("scale", 1, "the world's size", lower_bound=1, flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "the world's random seed", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the files and print where they are."""
    cli.parse(FLAGS, argv, __doc__)
    return cli.attempt(lambda: f"wrote {write_recbole(sw.build_world(_SCALE.value, _SEED.value), _OUT.value)}",
                       ValueError)


if __name__ == "__main__":
    cli.run(main)
