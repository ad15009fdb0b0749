"""Train a model from a YAML run config (also under ``accelerate launch`` / ``torchrun``).

    python tools/train.py --config configs/contrastive_tiny_8f_shapes.yaml [key.sub=value ...] [--resume [DIR|auto]]
    accelerate launch --config_file configs/accelerate/ddp.yaml tools/train.py --config ...
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 tools/train.py --config ...   # CPU, gloo

Overrides use the config's key paths (``optim.lr=1e-4``, ``stages.0.steps=100``). ``--resume`` alone means
``auto``: the newest complete checkpoint of ``output_dir``.
"""

from __future__ import annotations

import argparse
import sys

from vidvlm.errors import VidVLMError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config (YAML)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, help="checkpoint dir or 'auto'")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    try:
        from vidvlm.train.checkpoint import resolve_resume
        from vidvlm.train.config import load_train_config, validate_model_config
        from vidvlm.train.trainer import Trainer

        cfg = load_train_config(args.config, args.overrides)
        validate_model_config(cfg, where=args.config)
        if args.resume is not None:  # fail before building data and model
            args.resume = str(resolve_resume(args.resume, cfg.output_dir))
        trainer = Trainer(cfg)
        trainer.train(resume=args.resume)
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
