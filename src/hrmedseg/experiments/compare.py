"""Train several models with one recipe and compare them in one table (the papers' Table 1).

A comparison file (YAML)::

    recipe: paper                      # base recipe: a shipped name or a YAML path
    out_dir: runs/compare_dsb2018      # one run folder per model: <out_dir>/<label>
    overrides:                         # applied to every model (same budget, split, seed)
      data: {root: ../shared/data/dsb2018}
      train: {epochs: 40, seed: 0}
    profile: {dtype: fp32}             # efficiency columns (optional: size, batch, dtype)
    models:
      - name: hrmedseg
      - name: unet
        overrides: {optim: {lr: 1.0e-3}}   # or a list of "section.key=value" strings
      - {name: swin_unetr, label: swin_unetr_lr3e-4, overrides: ["optim.lr=3e-4"]}

:func:`run_compare` trains each model with :func:`hrmedseg.training.run.train` (a complete run
is not trained again, an interrupted one resumes from its last checkpoint), then writes
``compare.md``, ``compare.csv`` and ``compare.json`` into ``out_dir``: test Dice, IoU and HD95
(mean ± std over test images, at the model resolution as the papers report) with parameters,
MACs, and — on CUDA, measured in the same process by
:func:`~hrmedseg.profiling.profile.profile_model` — peak training memory per image and training
images/s ("—" on CPU).
"""
from __future__ import annotations

import copy
import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


from ..errors import first_line
from ..training.config import Config, ConfigError, apply_overrides, load_config

__all__ = ["CompareSpec", "ModelEntry", "load_compare", "build_configs", "run_compare",
           "format_compare_markdown"]

_TOP_KEYS = {"recipe", "out_dir", "overrides", "models", "profile", "resolution"}


@dataclass
class ModelEntry:
    name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    override_strings: list[str] = field(default_factory=list)


@dataclass
class CompareSpec:
    recipe: str
    out_dir: str
    models: list[ModelEntry]
    overrides: dict[str, Any] = field(default_factory=dict)
    override_strings: list[str] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    resolution: str = "model_resolution"
    source: str = ""


def _split_overrides(value: Any, where: str) -> tuple[dict[str, Any], list[str]]:
    if value is None:
        return {}, []
    if isinstance(value, dict):
        return copy.deepcopy(value), []
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return {}, list(value)
    raise ConfigError(f"{where}: overrides must be a mapping of sections or a list of "
                      f"'section.key=value' strings, got {value!r}")


def load_compare(path: str | Path, extra_overrides: Sequence[str] = ()) -> CompareSpec:
    """Read a comparison YAML (``extra_overrides`` apply to every model, after the file's)."""
    p = Path(path)
    if not p.is_file():
        from ..training.config import recipe_path
        try:  # a shipped comparison, e.g. "compare_dsb2018"
            p = recipe_path(str(path))
        except ConfigError:
            raise ConfigError(f"{path}: comparison file not found") from None
    from ..training.config import read_yaml_mapping
    data = read_yaml_mapping(p)
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(_TOP_KEYS))})")
    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise ConfigError(f"{p}: 'models' must be a non-empty list of {{name, overrides}}")
    entries: list[ModelEntry] = []
    for i, m in enumerate(models_raw):
        if isinstance(m, str):
            m = {"name": m}
        if not isinstance(m, dict) or "name" not in m:
            raise ConfigError(f"{p}: models[{i}] needs a 'name'")
        bad = set(m) - {"name", "label", "overrides"}
        if bad:
            raise ConfigError(f"{p}: models[{i}]: unknown key(s) {', '.join(sorted(bad))} "
                              f"(known: label, name, overrides)")
        ov, ovs = _split_overrides(m.get("overrides"), f"{p}: models[{i}]")
        entries.append(ModelEntry(str(m["name"]), str(m.get("label") or m["name"]), ov, ovs))
    labels = [e.label for e in entries]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"{p}: model label(s) {', '.join(dup)} appear twice; give each a 'label'")
    ov, ovs = _split_overrides(data.get("overrides"), f"{p}: overrides")
    profile = data.get("profile") or {}
    if not isinstance(profile, dict) or set(profile) - {"size", "batch", "dtype", "enabled"}:
        raise ConfigError(f"{p}: profile takes size, batch, dtype, enabled; got {profile!r}")
    resolution = str(data.get("resolution", "model_resolution"))
    if resolution not in ("model_resolution", "original_resolution"):
        raise ConfigError(f"{p}: resolution must be model_resolution or original_resolution")
    return CompareSpec(recipe=str(data.get("recipe", "paper")),
                       out_dir=str(data.get("out_dir", "runs/compare")), models=entries,
                       overrides=ov, override_strings=ovs + list(extra_overrides),
                       profile=profile, resolution=resolution, source=str(p))


def build_configs(spec: CompareSpec, out_dir: str | Path | None = None) -> dict[str, Config]:
    """One training :class:`Config` per model: recipe ← shared overrides ← model ← its overrides."""
    root = Path(out_dir or spec.out_dir)
    configs: dict[str, Config] = {}
    for e in spec.models:
        cfg = load_config(spec.recipe)
        try:
            apply_overrides(cfg, spec.overrides)
            apply_overrides(cfg, {"model": {"name": e.name}})
            apply_overrides(cfg, e.overrides)
        except ConfigError as exc:
            raise ConfigError(f"{e.label}: {exc}") from None
        strings = [*spec.override_strings, *e.override_strings, f"train.out_dir={root / e.label}"]
        try:
            cfg = load_config(None, strings, base=cfg)  # validates the merged result
        except ConfigError as exc:
            raise ConfigError(f"{e.label}: {exc}") from None
        configs[e.label] = cfg
    return configs


def _run_complete(cfg: Config) -> dict[str, Any] | None:
    """The run's summary.json if the run finished its epochs and has test metrics."""
    run = Path(cfg.train.out_dir)
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if int(summary.get("epochs_done", 0)) < cfg.train.epochs:
        return None
    if cfg.train.eval_test and not (run / "test" / "summary.json").is_file():
        return None
    return summary


def _test_metrics(cfg: Config, resolution: str) -> dict[str, Any]:
    p = Path(cfg.train.out_dir) / "test" / "summary.json"
    if not p.is_file():
        return {}
    s = json.loads(p.read_text())
    out: dict[str, Any] = {"n_test": s.get("n_images")}
    for k in ("dice", "iou", "hd95"):
        if k in s.get(resolution, {}):
            out[k] = {"mean": s[resolution][k]["mean"], "std": s[resolution][k]["std"]}
    return out


def _efficiency(cfg: Config, spec: CompareSpec, device: str) -> dict[str, Any]:
    """Params and MACs always; memory and speed on CUDA only (same process as the training)."""
    import gc

    import torch

    from ..profiling.profile import profile_model

    prof = spec.profile
    if prof.get("enabled", True) is False:
        return {}
    size = prof.get("size") or cfg.data.size
    size = (int(size[0]), int(size[-1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    batch = int(prof.get("batch") or cfg.train.batch_size)
    dtype = str(prof.get("dtype") or "fp32")
    kwargs = dict(num_classes=cfg.model.num_classes, in_chans=cfg.model.in_chans, **cfg.model.overrides)
    on_cuda = device.startswith("cuda") and torch.cuda.is_available()
    out: dict[str, Any] = {"profile_size": list(size), "profile_dtype": dtype}
    try:
        r = profile_model(cfg.model.name, size=size, batch=batch, device="cuda" if on_cuda else "cpu",
                          dtype=dtype, macs=True, memory=on_cuda, speed=on_cuda, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the table still gets its accuracy columns
        out["profile_error"] = first_line(exc)
    else:
        out.update(params=r.params_total, macs_thop=r.macs_thop, macs_all_ops=r.macs_all_ops,
                   peak_train_mem_per_image_gb=r.peak_train_mem_per_image_gb,
                   train_images_per_s=r.train_images_per_s, profile_batch=batch if on_cuda else None,
                   profile_device=r.env.get("gpu") if on_cuda else None)
        del r
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    return out


def _pm(m: Mapping[str, Any] | None, scale: float, fmt: str) -> str:
    if not m or m.get("mean") is None:
        return "—"
    return f"{format(m['mean'] * scale, fmt)} ± {format(m['std'] * scale, fmt)}"


def _num(v: float | None, fmt: str, scale: float = 1.0) -> str:
    return "—" if v is None else format(v / scale, fmt)


COLUMNS = ("Method", "Params (M)", "MACs (G)", "#Mem (GB)", "Train img/s", "Dice (%)", "IoU (%)",
           "HD95 (px)")


def _table_cells(row: Mapping[str, Any]) -> list[str]:
    return [row["label"], _num(row.get("params"), ".2f", 1e6), _num(row.get("macs_thop"), ".2f", 1e9),
            _num(row.get("peak_train_mem_per_image_gb"), ".3f"), _num(row.get("train_images_per_s"), ".1f"),
            _pm(row.get("dice"), 100.0, ".2f"), _pm(row.get("iou"), 100.0, ".2f"),
            _pm(row.get("hd95"), 1.0, ".2f")]


def format_compare_markdown(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> str:
    lines = []
    if meta:
        lines.append(f"Test split, {meta.get('resolution', 'model_resolution').replace('_', ' ')}; "
                     f"recipe {meta.get('recipe')}"
                     + (f" with its overrides ({meta['training']})" if meta.get("training") else "")
                     + f", {meta.get('epochs')} epochs, seed {meta.get('seed')}, "
                     f"data {meta.get('data')}. MACs: thop convention at batch 1; #Mem: peak training "
                     f"memory per image ({meta.get('profile_dtype', 'fp32')}, "
                     f"{meta.get('profile_device') or 'CUDA only'}).")
        lines.append("")
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for r in rows:
        lines.append("| " + " | ".join(_table_cells(r)) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    keys = ["label", "model", "epochs_done", "n_test", "dice_mean", "dice_std", "iou_mean", "iou_std",
            "hd95_mean", "hd95_std", "params", "macs_thop", "macs_all_ops",
            "peak_train_mem_per_image_gb", "train_images_per_s", "run_dir"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        flat = dict(r)
        for k in ("dice", "iou", "hd95"):
            m = r.get(k) or {}
            flat[f"{k}_mean"], flat[f"{k}_std"] = m.get("mean"), m.get("std")
        w.writerow({k: ("" if flat.get(k) is None else (f"{flat[k]:.6g}" if isinstance(flat[k], float)
                                                          else flat[k])) for k in keys})
    return buf.getvalue()


def preflight(configs: Mapping[str, Config]) -> None:
    """Build every model once before any training, so that a missing optional library or a
    size a model cannot take is reported in one line up front, not after hours of training."""
    import gc

    from ..training.run import build_model

    problems = []
    for label, cfg in configs.items():
        probe = copy.deepcopy(cfg)
        probe.model.pretrained = "none"
        try:
            build_model(probe)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{label}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        gc.collect()
    if problems:
        raise ConfigError("cannot build " + "; ".join(problems))


def run_compare(spec: CompareSpec, out_dir: str | Path | None = None, device: str | None = None,
                train_fn: Callable[[Config], dict[str, Any]] | None = None,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or resume, or skip when complete) every model, then write the comparison table."""
    from ..atomic import atomic_write_bytes, write_json_atomic

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    custom_train = train_fn is not None
    if train_fn is None:
        from ..training.run import train as train_fn
    root = Path(out_dir or spec.out_dir)
    configs = build_configs(spec, root)
    if not custom_train:
        preflight(configs)
    rows: list[dict[str, Any]] = []
    for label, cfg in configs.items():
        if device:
            cfg.train.device = device
        done = _run_complete(cfg)
        if done is not None:
            log(f"[compare] {label}: complete run in {cfg.train.out_dir}; not training again")
            summary = done
        else:
            log(f"[compare] {label}: training {cfg.model.name} -> {cfg.train.out_dir}")
            try:
                summary = train_fn(cfg)
            except (KeyboardInterrupt, ConfigError):
                raise
            except Exception as exc:  # noqa: BLE001 - one model's failure must not lose the others
                msg = first_line(exc)
                log(f"[compare] {label}: FAILED ({msg}); rerun the same command to retry it")
                rows.append({"label": f"{label} (failed: {msg[:80]})", "model": cfg.model.name,
                             "error": msg, "run_dir": cfg.train.out_dir})
                continue
        dev = cfg.train.device
        if dev == "auto":
            import torch
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        row: dict[str, Any] = {"label": label, "model": cfg.model.name,
                               "epochs_done": summary.get("epochs_done"), "run_dir": cfg.train.out_dir,
                               "overrides": next(e for e in spec.models if e.label == label).overrides}
        row.update(_test_metrics(cfg, spec.resolution))
        row.update(_efficiency(cfg, spec, dev))
        rows.append(row)
    first = next(iter(configs.values()))
    prof_dev = next((r.get("profile_device") for r in rows if r.get("profile_device")), None)
    meta = {"source": spec.source, "recipe": spec.recipe, "resolution": spec.resolution,
            "epochs": first.train.epochs, "seed": first.train.seed, "data": first.data.root,
            "size": first.data.size, "profile_dtype": spec.profile.get("dtype", "fp32"),
            "profile_device": prof_dev,
            # What the runs actually used (the recipe name alone hides the shared overrides).
            "training": (f"{first.optim.name} lr {first.optim.lr:g} wd {first.optim.weight_decay:g}, "
                         f"{first.schedule.name} schedule, loss {first.loss.name}, augment "
                         f"{first.data.augment}, {first.train.precision}, batch {first.train.batch_size}, "
                         f"pretrained {first.model.pretrained}")}
    from ..profiling.profile import environment
    import torch
    meta["env"] = environment(torch.device("cpu"))
    root.mkdir(parents=True, exist_ok=True)
    md = format_compare_markdown(rows, meta)
    atomic_write_bytes(root / "compare.md", md.encode())
    atomic_write_bytes(root / "compare.csv", _csv(rows).encode())
    write_json_atomic(root / "compare.json", {**meta, "rows": rows}, default=str)
    return {"rows": rows, "meta": meta, "markdown": md,
            "paths": {k: root / f"compare.{k}" for k in ("md", "csv", "json")}}
