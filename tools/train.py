"""Train a model from a YAML run config (also under ``accelerate launch`` / ``torchrun``).

    python tools/train.py --config configs/contrastive_tiny_8f_shapes.yaml [key.sub=value ...]
        [--resume [DIR|auto|if-any]] [--force-resume] [--overwrite]
    accelerate launch --config_file configs/accelerate/ddp.yaml tools/train.py --config ...
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 tools/train.py --config ...   # CPU, gloo

Overrides use the config's key paths (``optim.lr=1e-4``, ``stages.0.steps=100``). ``--resume`` alone means
``auto``: the newest complete checkpoint of ``output_dir`` (an error if it has none); ``--resume if-any`` is the
same but starts a fresh run when the folder has no checkpoint yet, so a job script's one command both starts the run
and continues it after a crash or preemption. With ``auto`` or ``if-any`` a run that already finished (``final/`` at
its last step, same config) is left as it is: nothing is trained or evaluated again.

One folder holds one run. A fresh run refuses an ``output_dir`` that holds another run's checkpoints, ``final/``,
``metrics.jsonl`` or ``train_config.yaml`` (a rerun of the same config that stopped before its first checkpoint is
allowed); ``--overwrite`` deletes those (nothing else) and starts over. ``--resume`` refuses a config that differs
from the checkpoint's in anything that changes training (model, data, optimiser, schedule, stages, seed, precision,
accumulation, clipping), naming the keys; logging, evaluation, checkpoint cadence, paths, ``data.num_workers`` and
``compile`` may change. ``--force-resume`` accepts the change (e.g. more steps): the run is then no longer an exact
continuation. A resume drops the checkpoints and ``metrics.jsonl`` rows after the resumed step, so the folder
describes one history. While a run trains, its folder is locked (``train.lock``): a second run, ``--resume`` or
``--overwrite`` into it is refused with the live run's pid and host (a killed run leaves no lock behind).
"""

from __future__ import annotations

import argparse
import os
import sys

from vidvlm.errors import VidVLMError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config (YAML)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, help="checkpoint dir, 'auto' or 'if-any'")
    parser.add_argument("--overwrite", action="store_true", help="replace the run that output_dir holds")
    parser.add_argument(
        "--force-resume", action="store_true", help="resume although the config changed in keys that change training"
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_intermixed_args(argv)  # options may also follow the overrides
    try:
        from vidvlm.train.checkpoint import resolve_resume
        from vidvlm.train.config import load_train_config, validate_model_config
        from vidvlm.train.rundir import check_output_dir, finished_step, lock_run_dir
        from vidvlm.train.trainer import Trainer

        cfg = load_train_config(args.config, args.overrides)
        validate_model_config(cfg, where=args.config)
        # fail before building data and model (the trainer checks again on every rank)
        if os.environ.get("RANK", "0") == "0":  # a live run in the folder? (the trainer locks it for the run itself)
            lock_run_dir(cfg.output_dir).release()
        if args.resume in ("auto", "if-any") and not args.overwrite and (done := finished_step(cfg)) is not None:
            print(f"{cfg.output_dir}: the run finished already (final/ at step {done}); nothing to do")
            return 0
        resume = resolve_resume(args.resume, cfg.output_dir) if args.resume is not None else None
        check_output_dir(cfg, resume, overwrite=args.overwrite, force_resume=args.force_resume)
        trainer = Trainer(cfg)
        trainer.train(resume=resume, overwrite=args.overwrite, force_resume=args.force_resume)
    except VidVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # NonFiniteLossError with nonfinite: stop (a checkpoint was written)
        print(f"stopped: {e}", file=sys.stderr)
        return 3
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
