# covers: FL-2, LT-1, BAE-2, BAE-4, BAE-5, PG-1, PG-4, SAP-2, CACHE-2, CONV-6
"""The run configuration (STYLE 11): typed and validated, unknown keys are errors that list the
valid keys, every key is used, presets load, ``auto`` keys resolve from the method (FL-2), and the
written config.toml reads back equal."""

import dataclasses
import inspect
import re

import pytest

from refimpl.fl import config as C
from refimpl.fl.config import ConfigError, config_from_dict, load_config, parse_set, to_toml


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"lr": 0.1, "learning_rate": 0.2}})
    msg = str(e.value)
    assert "train.learning_rate" in msg
    for key in ("clients_per_round", "local_epochs", "batch_size", "lr", "lr_min", "momentum"):
        assert key in msg


def test_unknown_section_lists_valid_sections():
    with pytest.raises(ConfigError, match=r"unknown section.*'optimizer'.*run, data, model"):
        config_from_dict({"optimizer": {"lr": 0.1}})


def test_unknown_key_through_set():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) sparse\.densty.*density"):
        load_config("smoke", sets=["sparse.densty=0.5"])


@pytest.mark.parametrize("item, pattern", [
    ("sparse.density=0", r"sparse\.density must be > 0"),
    ("sparse.density=1.5", r"sparse\.density must be <= 1"),
    ("sparse.density=-0.1", r"sparse\.density must be > 0"),
    ("train.lr=-0.1", r"train\.lr must be > 0"),
    ("train.lr=0", r"train\.lr must be > 0"),
    ("train.batch_size=0", r"train\.batch_size must be >= 1"),
    ("train.batch_size=2.5", r"train\.batch_size must be an integer"),
    ("train.momentum=1.0", r"train\.momentum must be < 1"),
    ("sap.gamma=1.0", r"sap\.gamma must be < 1"),
    ("sap.cache_policy=zip", r"sap\.cache_policy must be one of 'auto', 'dense', 'bitmap'"),
    ("run.method=fedprox", r"run\.method must be one of 'fedavg', 'static', 'prune_grow'"),
    ("run.rounds=0", r"run\.rounds must be >= 1"),
    ("bae.enabled=1", r"bae\.enabled must be true or false or \"auto\""),
    ("bae.lambda=nan", r"bae\.lambda must be finite"),
    ("bae.variant=l1", r"bae\.variant must be one of 'l2sq', 'l2'"),
    ("model.norm=layernorm", r"model\.norm must be one of 'nsconv', 'bn', 'none', \"auto\""),
    ("model.name=vgg", r"model\.name 'vgg' is not in the zoo; valid models: cnn"),
    ("data.synthetic_shape=[1, 12]", r"synthetic_shape must be a list of 3 positive integers"),
    ("train.clients_per_round=9", r"clients_per_round = 9 exceeds data\.num_clients = 4"),
    ("sparse.t_end=9", r"sparse\.t_end = 9 exceeds run\.rounds = 5"),
    ("bae.rounds=2", r"bae\.rounds = 2 must be smaller than sparse\.delta_t = 2"),
])
def test_bad_values_give_clear_errors(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("smoke", sets=[item])


@pytest.mark.parametrize("sets, pattern", [
    (["run.method=fedavg", "sparse.density=0.5"], r"fedavg.*dense.*sparse\.density = 1"),
    (["run.method=static", "sparse.density=1"], r"needs sparse\.density < 1"),
    (["run.method=static", "bae.enabled=true"], r"bae\.enabled = true needs a method that "
                                                r"adjusts"),
    (["run.method=fedavg", "sparse.density=auto", "sparse.prune=marked"],
     r"sparse\.prune = 'marked' needs"),
])
def test_conflicting_keys(sets, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("smoke", sets=sets)


@pytest.mark.parametrize("method, norm, density, bae, gamma", [
    ("fedavg", "bn", 1.0, False, 0.0),
    ("static", "bn", 0.1, False, 0.0),
    ("prune_grow", "bn", 0.1, False, 0.0),
    ("fedmef", "nsconv", 0.1, True, 0.7),
])
def test_auto_keys_resolve_from_the_method(method, norm, density, bae, gamma):
    """FL-2: the methods share one loop; auto switches take the method's values and explicit
    values override them (every ablation is a config)."""
    cfg = config_from_dict({"run": {"method": method}, "data": {"num_clients": 100}})
    assert (cfg.model.norm, cfg.sparse.density, cfg.bae.enabled, cfg.sap.gamma) == (
        norm, density, bae, gamma)
    if method in ("prune_grow", "fedmef"):
        ablation = config_from_dict({"run": {"method": method}, "model": {"norm": "none"},
                                     "bae": {"enabled": not bae}, "sap": {"gamma": 0.5}})
        assert (ablation.model.norm, ablation.bae.enabled, ablation.sap.gamma) == (
            "none", not bae, 0.5)


def test_paper_preset_holds_the_published_defaults():
    cfg = load_config("paper")
    assert (cfg.data.num_clients, cfg.train.clients_per_round) == (100, 10)
    assert (cfg.data.partition, cfg.data.dirichlet_alpha) == ("dirichlet", 0.5)
    assert (cfg.train.local_epochs, cfg.train.batch_size) == (5, 64)
    assert (cfg.train.lr, cfg.train.lr_min) == (0.1, 0.01)
    assert (cfg.sparse.density, cfg.sparse.delta_t, cfg.sparse.alpha) == (0.1, 10, 0.3)
    assert cfg.sap.gamma == 0.7
    assert cfg.run.method == "fedmef" and cfg.bae.enabled and cfg.model.norm == "nsconv"


@pytest.mark.parametrize("preset", C.preset_names())
def test_presets_load_and_round_trip(preset, tmp_path):
    cfg = load_config(preset)
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path=path) == cfg
    resolved = (cfg.model.norm, cfg.sparse.density, cfg.bae.enabled, cfg.sap.gamma)
    assert "auto" not in resolved


def test_demo_preset_shows_an_adjustment():
    cfg = load_config("demo")
    assert cfg.data.dataset == "fashion-mnist-bundled" and cfg.model.name == "cnn"
    assert cfg.data.partition == "dirichlet" and cfg.data.dirichlet_alpha == 0.5
    assert cfg.sparse.delta_t <= cfg.t_end <= cfg.run.rounds


def test_layers_override_in_order(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nlr = 0.5\nbatch_size = 8\n')
    cfg = load_config("smoke", path, ["train.lr=0.25", "run.method=static"])
    assert cfg.train.lr == 0.25 and cfg.train.batch_size == 8 and cfg.run.method == "static"
    assert cfg.model.width == load_config("smoke").model.width


def test_parse_set_values():
    assert parse_set("train.lr=0.05") == ("train", "lr", 0.05)
    assert parse_set("run.method=static") == ("run", "method", "static")
    assert parse_set('run.method="static"') == ("run", "method", "static")
    assert parse_set("bae.enabled=false") == ("bae", "enabled", False)
    assert parse_set("data.synthetic_shape=[1,8,8]") == ("data", "synthetic_shape", [1, 8, 8])
    for bad in ("train.lr", "lr=0.1", "a.b.c=1", ".lr=1"):
        with pytest.raises(ConfigError):
            parse_set(bad)


def test_bad_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(path=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path=bad)
    with pytest.raises(ConfigError, match="unknown preset 'nope'; valid presets: authors, demo"):
        load_config("nope")


def test_every_key_is_read_by_the_engine():
    """STYLE 11: every key is used. Each attribute must be read somewhere in refimpl/fl outside
    the config module (a key nobody reads would be dead configuration)."""
    import pathlib

    src = "\n".join(p.read_text() for p in pathlib.Path(C.__file__).parent.glob("*.py")
                    if p.name != "config.py")
    # the typed objects the config derives for the engine read their keys once, there
    src += inspect.getsource(C.Config.sap_policy.func)
    for sec, cls in C._SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert re.search(rf"\.{f.name}\b", src), f"{sec}.{f.name} is never read"
