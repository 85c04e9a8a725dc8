"""python -m recfound_jax.train --config configs/<name>.py [--workdir RUN_DIR] [--resume] [--config.key=value]"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file under configs/ (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config.name>).")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its last checkpoint.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a run already in --workdir.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv: list[str]) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    from recfound_jax.offline import go_offline  # noqa: PLC0415

    go_offline()
    from recfound_jax import distributed  # noqa: PLC0415

    distributed.set_gpu_xla_flags()  # before jax starts its backend
    distributed.initialize_from_env()  # many processes: before any device is touched
    from recfound_jax.train.trainer import train  # noqa: PLC0415 (after flags: jax starts here)

    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/demo.py")
    workdir = Path(_WORKDIR.value or Path("runs") / config.name)
    summary = train(config, workdir, resume=_RESUME.value, overwrite=_OVERWRITE.value, progress=_PROGRESS.value)
    print(json.dumps({k: summary[k] for k in ("steps", "completed", "final_loss", "final_loss_emb",
                                              "final_loss_gen", "seconds", "tokens_per_s")}, indent=2))
    print(f"run directory: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
