# covers: FL-1, RNG-1, MEM-4
"""The Flower engine on real infrastructure (docs/flower.md): ``fedmef run --engine flower``
starts a SuperLink and SuperNodes on 127.0.0.1 (Flower's Deployment Engine, ``flwr==1.42.0``),
and the run directory is byte-identical to ``--engine local`` (RNG-1). Every process the
federation started (the SuperLink, the SuperNodes, and what Flower starts from them: SuperExecs,
the ServerApp, the ClientApps) is gone afterwards, on success and on failure. A SuperNode that
dies mid-round stops the run with an error naming the client and the round, and the run resumes
from its last checkpoint to the uninterrupted bytes.

These tests start real processes; the two take about a minute or two each on two busy cores
(Flower adds several seconds per round: a process per message, polling).
"""

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from refimpl.cli import main
from refimpl.fl import load_config, run
from refimpl.fl.flower import launch

SMOKE2 = ["--preset", "smoke", "--set", "run.rounds=2", "--set", "train.clients_per_round=3"]


def _digest(d: Path) -> dict:
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest()
            for f in ("metrics.jsonl", "model.npz")}


def _lines(path: Path) -> list:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def federations(monkeypatch):
    """Every LocalFederation that run_local makes, for checks after it stopped."""
    made = []

    class Recorded(launch.LocalFederation):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(launch, "LocalFederation", Recorded)
    return made


def _all_gone(fed) -> None:
    names = " ".join(cmd for _, cmd in fed.seen.values())
    for part in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp"):
        assert part in names, f"{part} was never seen: {sorted(fed.seen.values())}"
    running = {pid: cmd for pid, (start, cmd) in fed.seen.items() if launch.alive(pid, start)}
    assert not running, f"still running after the run: {running}"
    assert not launch.token_processes(fed.token)


def test_real_superlink_and_three_supernodes_equal_the_local_engine(federations, tmp_path,
                                                                    capsys):
    """2 rounds of smoke (an adjustment at round 2), 3 clients per round on 3 slot SuperNodes:
    metrics.jsonl and model.npz equal the local engine's; Flower carried the ledger's bytes."""
    fl, loc = tmp_path / "flower", tmp_path / "local"
    t0 = time.monotonic()
    assert main(["run", "--engine", "flower", "--quiet", *SMOKE2, "--out", str(fl)]) == 0
    seconds = time.monotonic() - t0
    out = capsys.readouterr().out
    assert main(["run", "--quiet", *SMOKE2, "--out", str(loc)]) == 0
    assert _digest(fl) == _digest(loc)
    (fed,) = federations
    assert len(fed.node_configs) == 3 and all(c.startswith("slot=") for c in fed.node_configs)
    _all_gone(fed)
    records, transport = _lines(fl / "metrics.jsonl"), _lines(fl / "transport.jsonl")
    assert [r["round"] for r in transport] == [1, 2] and records[1]["adjustment"]
    for rec, tr in zip(records, transport, strict=True):
        assert tr["payload_down"] == rec["bytes_down"] + tr["mask_resend"]
        assert tr["payload_up"] == rec["bytes_up"]
        assert tr["framing_down"] > 0 and tr["framing_up"] > 0
    assert "Flower carried" in out and "SuperNode(s) (slots) on 127.0.0.1" in out
    assert not list(tmp_path.glob(".flower.flower-*"))  # the workspace goes after a success
    print(f"flower engine, 2 smoke rounds with 3 SuperNodes: {seconds:.0f} s in all, "
          f"{[r['seconds'] for r in transport]} s per round")


def _clientapp_of(fed, supernode) -> bool:
    """Whether a ClientApp process of ``supernode`` (started by its SuperExec) is running."""
    procs = launch.token_processes(fed.token)
    ppid = {}
    for pid in procs:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid[pid] = int(stat[stat.rindex(")") + 2:].split()[1])
    execs = {pid for pid, parent in ppid.items() if parent == supernode.pid}
    return any(ppid.get(pid) in execs and "flwr-clientapp" in cmd
               for pid, (_, cmd) in procs.items())


def test_a_supernode_killed_mid_round_is_named_and_resume_finishes(federations, tmp_path):
    """One SuperNode per partition (as devices); the node of a client of round 3 is killed
    (SIGKILL) while its ClientApp trains that client: the run stops with an error naming the
    client and round 3, every process is stopped, the checkpoint of round 2 is intact, and
    ``--resume`` (local engine) finishes with the uninterrupted run's bytes."""
    cfg = load_config("smoke", sets=["run.rounds=3"])
    full = tmp_path / "full"
    run(cfg, full, progress=False, plots=False, log=lambda *a: None)
    victim_client = _lines(full / "metrics.jsonl")[2]["clients"][1]
    out = tmp_path / "run"
    killed = {}

    def killer():
        while not federations:
            time.sleep(0.1)
        fed = federations[0]
        tr = out / "transport.jsonl"  # the clients of rounds 1 and 2 are done
        while not tr.exists() or tr.read_text().count("\n") < 2:
            time.sleep(0.1)
        name = next(f"supernode-{j}" for j, c in enumerate(fed.node_configs)
                    if c.startswith(f"partition-id={victim_client} "))
        node = dict(fed.procs)[name]
        while not _clientapp_of(fed, node):
            time.sleep(0.05)
        node.kill()
        killed["at"] = time.monotonic()

    from refimpl.fl.config import to_toml

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    with pytest.raises(launch.FlowerRunError) as err:
        launch.run_local(to_toml(cfg), out, supernodes="partitions",
                         num_clients=cfg.data.num_clients,
                         clients_per_round=cfg.train.clients_per_round, log=lambda *a: None)
    detected = time.monotonic() - killed["at"]
    msg = str(err.value)
    assert f"round 3: client {victim_client}: SuperNode" in msg, msg
    assert f"(partition {victim_client})" in msg and f"--resume {out}` continues from round 2" \
        in msg
    (fed,) = federations
    _all_gone(fed)
    assert len(_lines(out / "metrics.jsonl")) == 2
    run(None, out, resume=True, progress=False, plots=False, log=lambda *a: None)
    assert _digest(out) == _digest(full)
    print(f"a killed SuperNode was reported {detected:.0f} s after the kill")
