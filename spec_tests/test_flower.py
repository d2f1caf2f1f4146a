# covers: FL-1, AGG-1, MEM-4, RNG-1
"""The Flower engine in-process (docs/flower.md): the real ServerApp and ClientApp of
``refimpl.fl.flower.apps`` on a fake grid (spec_tests/flower_grid.py), and the wire format
underneath. The ServerApp runs the local engine's runner with Flower clients, so the run
directory must be the same bytes as ``--engine local`` (RNG-1, AGG-1), and every message must
carry exactly what the MEM-4 ledger counts. The real SuperLink and SuperNodes:
test_flower_deploy.py.
"""

import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from refimpl.fl import load_config, run, wire
from refimpl.fl.client import ClientError
from refimpl.fl.config import to_toml
from refimpl.fl.flower import apps
from refimpl.fl.flower.client import node_role
from refimpl.fl.flower.launch import write_app
from refimpl.fl.flower.server import FederationError
from refimpl.fl.server import bytes_down, bytes_up

from .flower_grid import FakeGrid

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(progress=False, plots=False, log=lambda *a: None)


def _digest(d: Path) -> dict:
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest()
            for f in ("metrics.jsonl", "model.npz")}


def _local(tmp_path_factory, *sets) -> Path:
    d = tmp_path_factory.mktemp("local") / "run"
    run(load_config("smoke", sets=list(sets)), d, **QUIET)
    return d


def _flower(grid, out: Path, cfg=None, resume=False, node_timeout=5.0) -> dict:
    """The real ServerApp on ``grid``; returns its result file."""
    result = out.parent / f"{out.name}.result.json"
    run_config = {"config": "" if cfg is None else to_toml(cfg), "out": str(out),
                  "resume": resume, "node-timeout": node_timeout, "result-file": str(result)}
    try:
        apps.server_app(grid, Context(7, 0, {}, RecordDict(), run_config))
    finally:
        outcome = json.loads(result.read_text("utf-8")) if result.exists() else None
    return outcome


def _slots(n, k):
    return [{"slot": j, "num-partitions": k} for j in range(n)]


def _partitions(k):
    return [{"partition-id": i, "num-partitions": k} for i in range(k)]


def _transport(d: Path) -> list:
    return [json.loads(x) for x in (d / "transport.jsonl").read_text().splitlines()]


def _metrics(d: Path) -> list:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


# ---- the wire format: payload = ledger, and the same bytes --------------------------------------
class WireClients:
    """Clients through the wire format without Flower: encode each download, rebuild and train
    it as a remote client does (wire.client_round), decode the upload."""

    def __init__(self, cfg, model, data):
        self.cfg, self.model, self.data, self.held = cfg, model, data, {}
        self.checked = 0

    def train(self, task):
        shapes = {n: task.params[n].shape for n in self.model.prunable}
        out = []
        for i, k in enumerate(task.clients):
            down = wire.encode_download(task, k, task.send_mask[i])
            assert wire.payload_nbytes(down.arrays) == bytes_down(
                task.params, task.buffers, task.masks, task.send_mask[i])
            up, carried = wire.client_round(down, self.cfg, self.model, self.data,
                                            self.held.get(k))
            if carried is not None:
                self.held[k] = carried
            u = wire.decode_upload(up, self.model, task.masks, task.t, k, task.plan.grow_counts)
            assert wire.payload_nbytes(up.arrays) == bytes_up(u, task.masks, shapes)
            self.checked += 1
            out.append(u)
        return out

    def round_report(self):
        return None


@pytest.mark.parametrize("sets", [
    ("run.method=fedmef", "bae.rounds=1"),
    ("run.method=prune_grow", "model.norm=bn", "train.momentum=0.9"),
    ("run.method=static",),
    ("run.method=fedavg", "sparse.density=1"),
    ("bae.marked_set=fedpruning", "sparse.growth_score=weight"),
], ids=["fedmef-bae1", "prune_grow-bn", "static", "fedavg", "compat"])
def test_wire_payload_is_the_ledger_and_the_run_is_the_same(sets, tmp_path):
    """Every download and upload of a run carries exactly the ledger's bytes (MEM-4), and a run
    whose clients rebuild their model from the sparse download equals the local run."""
    cfg = load_config("smoke", sets=["run.rounds=3", *sets])
    made = []

    def clients(*a):
        made.append(WireClients(*a))
        return made[-1]

    run(cfg, tmp_path / "wire", clients=clients, **QUIET)
    run(cfg, tmp_path / "local", **QUIET)
    assert made[0].checked == 3 * cfg.train.clients_per_round
    assert _digest(tmp_path / "wire") == _digest(tmp_path / "local")


def test_wire_rejects_what_does_not_fit(tmp_path):
    """A download or upload that does not fit the round or the model is a WireError naming the
    array and what was expected."""
    from refimpl.fl.data import load_fed_data
    from refimpl.fl.engine import server_begin
    from refimpl.fl.state import build_model, init_state

    cfg = load_config("smoke")
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    start = server_begin(cfg, model, init_state(cfg, model), 1)
    k = start.task.clients[0]
    down = wire.encode_download(start.task, k, True)
    name = next(n for n in down.arrays if n.startswith("value/"))
    bad = wire.Packet({**down.arrays, name: down.arrays[name][:-1]}, down.header)
    with pytest.raises(wire.WireError, match=f"array '{name}' has shape"):
        wire.decode_download(bad, cfg, model)
    no_masks = wire.Packet({n: a for n, a in down.arrays.items() if not n.startswith("mask/")},
                           down.header)
    with pytest.raises(wire.WireError, match="holds no mask"):
        wire.decode_download(no_masks, cfg, model)
    other = load_config("smoke", sets=["train.lr=0.05"])
    with pytest.raises(wire.WireError, match="round plan"):
        wire.decode_download(down, other, model)
    up, _ = wire.client_round(down, cfg, model, data)
    with pytest.raises(wire.WireError, match="it says it is client"):
        wire.decode_upload(up, model, start.task.masks, 1, k + 1, None)
    extra = wire.Packet({**up.arrays, "value/nope": np.zeros(1, np.float32)}, up.header)
    with pytest.raises(wire.WireError, match="unexpected arrays"):
        wire.decode_upload(extra, model, start.task.masks, 1, k, None)


# ---- the real ServerApp and ClientApp on a fake grid ---------------------------------------------
@pytest.fixture(scope="module")
def local3(tmp_path_factory):
    """The local engine's smoke run, 3 rounds (an adjustment at round 2, a new mask after)."""
    return _local(tmp_path_factory, "run.rounds=3")


@pytest.mark.parametrize("layout", ["slots", "partitions"])
def test_apps_on_a_fake_grid_equal_the_local_engine(layout, local3, tmp_path):
    """The ServerApp (sampling, marked set, aggregation, prune-and-grow: the engine's own) with
    clients trained by the ClientApp writes the local engine's bytes; each round's payload is
    the ledger's bytes_down / bytes_up of metrics.jsonl, Flower's framing reported beside."""
    cfg = load_config("smoke", sets=["run.rounds=3"])
    k = cfg.data.num_clients
    nodes = _slots(cfg.train.clients_per_round, k) if layout == "slots" else _partitions(k)
    out = tmp_path / "run"
    assert _flower(FakeGrid(apps.client_app, nodes), out, cfg)["ok"]
    assert _digest(out) == _digest(local3)
    for rec, tr in zip(_metrics(out), _transport(out), strict=True):
        assert tr["round"] == rec["round"]
        assert sorted(map(int, tr["nodes"])) == rec["clients"]
        assert tr["ledger_down"] == rec["bytes_down"] and tr["ledger_up"] == rec["bytes_up"]
        assert tr["payload_down"] == tr["ledger_down"] + tr["mask_resend"]
        assert tr["payload_up"] == tr["ledger_up"]
        assert tr["framing_down"] > 0 and tr["framing_up"] > 0
        assert tr["mask_resend"] == 0  # fresh nodes, fresh run: the ledger's bitmaps suffice
    if layout == "partitions":  # each client on the node of its own partition
        for tr in _transport(out):
            assert len(set(tr["nodes"].values())) == len(tr["nodes"])


def test_resume_on_fresh_nodes_resends_masks_and_is_identical(tmp_path_factory, tmp_path):
    """A run stopped after round 3 and resumed on the Flower engine: the fresh SuperNodes hold no
    mask, so clients that hold the current one (ledger: no bitmap) get it resent, reported
    apart; the run equals the uninterrupted one."""
    sets = ["run.checkpoint_every=1"]
    full = _local(tmp_path_factory, *sets)
    out = tmp_path / "run"
    run(load_config("smoke", sets=sets), out, stop_after=3, **QUIET)
    cfg = load_config("smoke", sets=sets)
    grid = FakeGrid(apps.client_app, _slots(cfg.train.clients_per_round, cfg.data.num_clients))
    assert _flower(grid, out, resume=True)["ok"]
    assert _digest(out) == _digest(full)
    tr = _transport(out)
    assert [r["round"] for r in tr] == [4, 5]
    assert any(r["mask_resend"] > 0 for r in tr)
    for r, m in zip(tr, _metrics(out)[3:]):
        assert r["payload_down"] == m["bytes_down"] + r["mask_resend"]


@pytest.fixture(scope="module")
def local5(tmp_path_factory):
    return _local(tmp_path_factory)


@pytest.mark.parametrize("resume_engine", ["local", "flower"])
def test_a_node_lost_mid_round_is_named_and_resume_finishes(resume_engine, local5, tmp_path):
    """A SuperNode that leaves while it trains a client of round 3 stops the run with an error
    naming the client and the round; the checkpoint of round 2 stays valid and a resume with
    either engine finishes with the uninterrupted run's bytes."""
    cfg = load_config("smoke")
    k = cfg.data.num_clients
    grid = FakeGrid(apps.client_app, _partitions(k))
    clients3 = _metrics(local5)[2]["clients"]
    victim = list(grid.contexts)[clients3[1]]  # the node of partition clients3[1]
    rounds_before = sum(clients3[1] in r["clients"] for r in _metrics(local5)[:2])
    grid.kill(victim, after=rounds_before + 1)
    out = tmp_path / "run"
    with pytest.raises(ClientError) as err:
        _flower(grid, out, cfg)
    msg = str(err.value)
    assert msg.startswith(f"round 3: client {clients3[1]}: SuperNode {victim} (partition "
                          f"{clients3[1]}) left the federation")
    outcome = json.loads((out.parent / "run.result.json").read_text())
    assert outcome["ok"] is False and outcome["error"] == msg
    assert len(_metrics(out)) == 2  # rounds 1 and 2, checkpoint of round 2
    if resume_engine == "local":
        run(None, out, resume=True, **QUIET)
    else:
        assert _flower(FakeGrid(apps.client_app, _partitions(k)), out, resume=True)["ok"]
    assert _digest(out) == _digest(local5)


def test_federation_errors_name_the_node_and_the_fix(tmp_path):
    cfg = load_config("smoke", sets=["run.rounds=1"])
    k = cfg.data.num_clients
    cases = [
        ([{"slot": 0, "num-partitions": k + 1}], FederationError, "num-partitions=5"),
        ([{"num-partitions": k}], FederationError, "neither partition-id nor slot"),
        ([{"partition-id": 0, "num-partitions": k}] * 2, FederationError,
         "all say they hold partition 0"),
        ([{"partition-id": 3, "num-partitions": k}], ClientError, "no SuperNode serves it"),
    ]
    for i, (nodes, exc, match) in enumerate(cases):
        with pytest.raises(exc, match=match):
            _flower(FakeGrid(apps.client_app, nodes), tmp_path / f"r{i}", cfg, node_timeout=1.0)
        assert not (tmp_path / f"r{i}").exists()  # nothing kept of a run that never started


def test_node_role_from_node_config():
    assert node_role({"partition-id": 3, "num-partitions": 4}, 4) == ("partition", 3)
    assert node_role({"slot": 0, "num-partitions": 4}, 4) == ("slot", 0)
    for bad, match in [({"partition-id": 4, "num-partitions": 4}, "must be 0..3"),
                       ({"slot": -1, "num-partitions": 4}, "whole number"),
                       ({"slot": 0, "partition-id": 0, "num-partitions": 4}, "both"),
                       ({"slot": 0}, "num-partitions=None")]:
        with pytest.raises(ValueError, match=match):
            node_role(bad, 4)


def test_app_directory_is_a_valid_flower_app(tmp_path):
    """write_app's pyproject.toml passes Flower's own validation (components importable) and
    carries the configuration as the ServerApp reads it."""
    from flwr.cli.config_utils import load_and_validate

    cfg = load_config("smoke")
    app = write_app(tmp_path / "app", config_text=to_toml(cfg), out="/srv/runs/x",
                    node_timeout=30.0, min_nodes=3)
    config, _ = load_and_validate(app / "pyproject.toml", check_module=True)
    rc = config["tool"]["flwr"]["app"]["config"]
    assert set(rc) == set(apps.RUN_CONFIG)
    assert tomllib.loads(rc["config"]) == tomllib.loads(to_toml(cfg))
    assert (rc["out"], rc["min-nodes"], rc["node-timeout"]) == ("/srv/runs/x", 3, 30.0)


def test_flower_is_an_extra_imported_lazily():
    """flwr==1.42.0 is the extra `flower` (not a runtime dependency) and part of the test
    requirements; importing the package, the engine or the CLI does not import flwr."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["flower"] == ["flwr==1.42.0"]
    assert not any(d.startswith("flwr") for d in pyproject["project"]["dependencies"])
    assert "flwr==1.42.0" in (ROOT / "requirements" / "test.txt").read_text().split()
    code = ("import sys, refimpl.fl.flower, refimpl.fl.flower.launch, refimpl.fl.runner, "
            "refimpl.cli; print('flwr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_cli_flower_flags_need_the_flower_engine(tmp_path, capsys):
    from refimpl.cli import main

    assert main(["run", "--preset", "smoke", "--superlink", "h:1", "--out",
                 str(tmp_path / "x")]) == 2
    assert "--superlink go with --engine flower" in capsys.readouterr().err
    assert main(["run", "--engine", "flower", "--preset", "smoke", "--insecure", "--out",
                 str(tmp_path / "x")]) == 2
    assert "go with --superlink" in capsys.readouterr().err
    assert main(["run", "--engine", "flower", "--preset", "smoke", "--superlink", "h:1",
                 "--insecure", "--out", "relative/x"]) == 2
    assert "absolute path" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
