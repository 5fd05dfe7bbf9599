"""``train(cfg)``: build model, loss and data from one config, fit, then test the best weights."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .config import Config, ConfigError


def build_model(cfg: Config):
    from ..models._hub import from_pretrained
    from ..models._registry import create_model

    def _load_distilled(folder: str, name: str, kwargs: dict[str, Any]):
        """A distilled student folder (``hrmedseg distill`` → ``RUN/student``, config.json
        ``metadata.distilled = true``): its ``encoder.*`` and ``neck.*`` weights go into a freshly
        built ``name`` model with the configured classes/size/overrides; the decoder stays at its
        initialisation (distillation never trains it)."""
        from ..models._hub import WEIGHTS_NAME, load_safetensors
        from ..models._registry import create_model

        model = create_model(name, pretrained=False, **kwargs)
        state = load_safetensors(Path(folder) / WEIGHTS_NAME)
        parts = ("encoder.", "neck.")
        own = {k: v for k, v in model.state_dict().items() if k.startswith(parts)}
        sub = {k: v for k, v in state.items() if k.startswith(parts)}
        if not own:
            raise ConfigError(f"model.pretrained={folder}: {name} has no encoder/neck to load a "
                              f"distilled encoder into")
        bad = [f"{k} {tuple(sub[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
               if k in sub and sub[k].shape != v.shape]
        missing = [k for k in own if k not in sub]
        extra = [k for k in sub if k not in own]
        if bad or missing or extra:
            what = (f"shape {bad[0]}" if bad else f"missing {missing[0]}" if missing
                    else f"unexpected {extra[0]}")
            raise ConfigError(f"model.pretrained={folder}: the distilled encoder does not fit "
                              f"{name} with these model.overrides ({len(bad)} shape mismatches, "
                              f"{len(missing)} missing, {len(extra)} unexpected keys; e.g. {what})")
        model.load_state_dict(sub, strict=False)
        model.pretrained_weight = str(folder)
        return model

    m = cfg.model
    pre = m.pretrained.strip()
    if pre.lower() in ("true", "false", "none", "default"):   # YAML may give True/False
        pre = pre.lower()
    # model.overrides win over what the model/data sections imply (a recipe may pin img_size)
    kwargs: dict[str, Any] = {"num_classes": m.num_classes, "in_chans": m.in_chans,
                              "img_size": tuple(cfg.data.size), **m.overrides}
    if pre and pre not in ("none", "default", "true", "false") and Path(pre).is_dir():
        from ..models._hub import read_config
        if (read_config(pre).get("metadata") or {}).get("distilled"):
            return _load_distilled(pre, m.name, kwargs)
        return from_pretrained(pre)
    flag: bool | str = False if pre in ("", "none", "false") else (True if pre in ("default", "true") else pre)
    if pre == "default":
        # The default recipe asks for the model's shipped default weight (for HRMedSeg the
        # distilled encoder) where there is one that fits the configured architecture; other
        # models, or a changed width/depth, start from their initialisation (said once).
        from ..models._hub import CheckpointError
        from ..models._pretrained import list_pretrained
        if not any(w.default for w in list_pretrained(m.name)):
            print(f"note: {m.name} ships no default pretrained weight; training from scratch",
                  file=sys.stderr)
            return create_model(m.name, pretrained=False, **kwargs)
        try:
            return create_model(m.name, pretrained=True, **kwargs)
        except CheckpointError as exc:
            print(f"note: {m.name}'s shipped pretrained weight does not fit model.overrides "
                  f"({str(exc).split(': ')[-1][:120]}); training from scratch", file=sys.stderr)
            return create_model(m.name, pretrained=False, **kwargs)
    return create_model(m.name, pretrained=flag, **kwargs)


def train(cfg: Config, resume: bool = True) -> dict[str, Any]:
    """Run a whole training as configured; returns a small summary dict."""
    from ..evaluation.evaluate import evaluate_samples, format_summary
    from ..inference.segmenter import Segmenter
    from ..models._hub import from_pretrained
    from .checkpoint import find_checkpoint
    from .data_setup import build_datasets
    from .distributed import barrier, init_distributed
    from .losses import build_loss
    from .trainer import Trainer, seed_everything

    info = init_distributed(cfg.train.device)
    seed_everything(cfg.train.seed, cfg.train.deterministic)  # the initial weights depend on it
    model = build_model(cfg)
    num_classes = int(model.config.num_classes)
    # Rank 0 builds the pre-resize cache first; the others then open the finished cache.
    data = build_datasets(cfg, num_classes, int(model.config.in_chans)) if info.is_main else None
    barrier(info)
    if data is None:
        data = build_datasets(cfg, num_classes, int(model.config.in_chans))
    try:
        loss = build_loss(cfg.loss.name, num_classes, **cfg.loss.kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss: {exc}") from None
    trainer = Trainer(cfg, model, loss, data.train, data.val, info, preprocess=data.preprocess)
    result = trainer.fit(resume=resume)
    summary: dict[str, Any] = {"run_dir": str(result.run_dir), "epochs_done": result.epochs_done,
                               "global_step": result.global_step, "best_val_dice": result.best_val_dice,
                               "stopped_early": result.stopped_early}
    finished = result.epochs_done >= cfg.train.epochs
    # A run cut short by its time limit is still evaluated (its summary says how far it got);
    # one stopped by max_steps is a partial run on purpose and is not.
    timed_out = result.stopped_early and not (cfg.train.max_steps and result.global_step >= cfg.train.max_steps)
    if info.is_main and (finished or timed_out) and cfg.train.eval_test and data.test is not None:
        best = find_checkpoint(Path(cfg.train.out_dir) / "checkpoints", "best") or \
            find_checkpoint(Path(cfg.train.out_dir) / "checkpoints", "last")
        seg = Segmenter(from_pretrained(best), device=str(info.device), size=cfg.data.size,
                        normalize=cfg.data.normalize, precision=cfg.train.precision,
                        batch_size=max(1, cfg.train.batch_size // 2))
        test_dir = Path(cfg.train.out_dir) / "test"
        res = evaluate_samples(seg, data.test.samples, out_dir=test_dir, overlays=6,
                               class_names=data.class_names, progress=True)
        print(format_summary(res, "model_resolution"), file=sys.stderr)
        print(format_summary(res, "original_resolution"), file=sys.stderr)
        summary["test"] = {k: {m: v["mean"] for m, v in res[k].items() if "/" not in m}
                           for k in ("model_resolution", "original_resolution")}
    trainer.close()
    if info.is_main:
        from ..atomic import atomic_write_bytes
        atomic_write_bytes(Path(cfg.train.out_dir) / "summary.json",
                           (json.dumps(summary, indent=2) + "\n").encode())
    return summary
