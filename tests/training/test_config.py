import pytest

from hrmedseg.training.config import ConfigError, load_config


def test_paper_recipe_is_default_values():
    cfg = load_config("paper")
    assert cfg.optim.name == "adam" and cfg.optim.lr == 1e-4
    assert cfg.schedule.name == "exponential" and cfg.schedule.gamma == 0.98
    assert cfg.train.batch_size == 16 and cfg.data.size == [1024, 1024]
    assert cfg.loss.name == "dice_focal"


def test_overrides_and_types(tmp_path):
    cfg = load_config("paper", ["optim.lr=1e-3", "data.size=512", "train.deterministic=true",
                                "model.overrides={depth: 4}"])
    assert cfg.optim.lr == 1e-3 and cfg.data.size == [512, 512]
    assert cfg.train.deterministic is True and cfg.model.overrides == {"depth": 4}


@pytest.mark.parametrize("ov,match", [
    (["optim.lrr=1"], "unknown key 'optim.lrr'"),
    (["train.epochs=many"], "train.epochs: expected an integer"),
    (["train.precision=fp8"], "train.precision"),
    (["nosection.x=1"], "unknown key 'nosection'"),
    (["optim=3"], "optim: expected a section"),
])
def test_bad_overrides_name_the_key(ov, match):
    with pytest.raises(ConfigError, match=match):
        load_config("paper", ov)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no recipe named"):
        load_config("nosuchrecipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name,model_cls", [("default", "HRMedSeg"), ("paper", "HRMedSeg"),
                                            ("herseg", "HRMedSeg"), ("qtseg", "QTSeg"),
                                            ("synapse", "HRMedSeg")])
def test_every_shipped_recipe_loads_and_builds_its_model(name, model_cls):
    """The qtseg recipe pins img_size in model.overrides; it once collided with the data
    size passed alongside and no model could be built from it."""
    from hrmedseg.training.run import build_model
    cfg = load_config(name, ["model.pretrained=none"])
    assert type(build_model(cfg)).__name__ == model_cls


def test_default_recipe_file_equals_the_dataclass_defaults():
    from hrmedseg.training.config import Config, load_config
    assert load_config("default").to_dict() == Config().to_dict()
    assert load_config("paper").model.pretrained == "none"


def test_time_horizon_schedule_follows_the_budget():
    from hrmedseg.training.config import ConfigError, load_config
    from hrmedseg.training.engine import lr_factor
    with pytest.raises(ConfigError, match="time_limit_min"):
        load_config(None, ["schedule.horizon=time"])
    with pytest.raises(ConfigError, match="cosine or constant"):
        load_config(None, ["schedule.horizon=time", "train.time_limit_min=1",
                           "schedule.name=exponential"])
    cfg = load_config(None, ["schedule.horizon=time", "train.time_limit_min=1",
                             "schedule.warmup_epochs=0"])
    assert lr_factor(cfg, 0.0, 0.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 50.0, 0.5) == pytest.approx(0.5)
    assert lr_factor(cfg, 3.0, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_default_pretrained_falls_back_to_scratch_when_the_weight_does_not_fit(capsys):
    from hrmedseg.training.config import load_config
    from hrmedseg.training.run import build_model
    tiny = ("model.overrides={embed_dim: 24, depth: 2, num_heads: [6, 6, 6], neck_dim: 32, "
            "decoder_heads: 4, decoder_mlp_dim: 32}")
    m = build_model(load_config(None, [tiny]))
    assert getattr(m, "pretrained_weight", None) is None
    assert "does not fit" in capsys.readouterr().err
    m = build_model(load_config(None, []))                 # the default architecture: loaded
    assert "distilled" in m.pretrained_weight
    with pytest.raises(Exception, match="does not fit"):  # asked for explicitly: an error
        build_model(load_config(None, [tiny, "model.pretrained=true"]))


def test_task_sections_and_recipes():
    """One Config for every task: the distill and esp_medsam recipes set the task and its
    section; unknown task names and keys of a task section are refused naming the key."""
    from hrmedseg.training.config import apply_overrides
    d = load_config("distill")
    assert d.task == "distill" and d.optim.name == "adam" and d.optim.lr == 1e-3
    assert d.schedule.name == "constant" and d.train.batch_size == 4 and d.train.epochs == 20
    e = load_config("esp_medsam", ["esp.w_modality=0.5", "esp.datasets=[{root: a, modality: 0}]"])
    assert e.task == "esp" and e.esp.w_modality == 0.5 and e.esp.datasets == [{"root": "a", "modality": 0}]
    assert e.schedule.name == "exponential" and e.optim.lr == 1e-4
    with pytest.raises(ConfigError, match="task must be one of"):
        load_config(None, ["task=classify"])
    with pytest.raises(ConfigError, match="unknown key 'distill.teachr'"):
        load_config("distill", ["distill.teachr=x"])
    cfg = load_config(None)
    with pytest.raises(ConfigError, match="esp.w_seg: expected a number"):
        apply_overrides(cfg, {"esp": {"w_seg": "heavy"}})
