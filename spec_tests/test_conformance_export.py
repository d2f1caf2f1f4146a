# covers: RNG-1, ERK-2, ERK-3, LT-2, LT-3, MASK-3, SAP-2, CACHE-2, CACHE-3, CACHE-4, PG-7, BAE-4
"""`fedmef conformance export`: the golden vectors are produced by the real engine (the
observer hook changes nothing), regenerate byte-identically, hold the RNG-1 draws as inputs,
agree between the .npz files and the binary tensor file, and obey the rules they document."""

import json
import math
import re
import shutil
import subprocess
from fractions import Fraction
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from refimpl.conformance import binfile, scenario
from refimpl.conformance.check import check_dumps
from refimpl.conformance.dump import Dump, DumpError
from refimpl.conformance.export import export
from refimpl.conformance.quantities import QUANTITIES
from refimpl.conformance.recorder import Recorder
from refimpl.core.rng import Purpose, stream
from refimpl.fl.config import ConfigError
from refimpl.fl.engine import run_round
from refimpl.fl.runner import _threads
from refimpl.fl.server import sample_clients
from refimpl.sap import format_nbytes, keep_count

from .conformance_dump import exported, load_step


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text("utf-8"))


def test_export_twice_is_byte_identical(tmp_path):
    """RNG-1: same checkout, same bytes, for every file of the dump."""
    export(tmp_path / "again")
    first, again = _files(exported()), _files(tmp_path / "again")
    assert list(first) == list(again) and len(first) == 2 + len(_manifest(exported())["steps"])
    for name in first:
        assert first[name] == again[name], f"{name} differs between two exports"


def test_observer_does_not_change_the_run():
    """The recorder only watches: rounds with and without it end in bit-identical states and
    identical metrics records."""
    cfg = scenario.scenario_config()
    out = []
    for observe in (False, True):
        data, model, state = scenario.build(cfg)
        rec = Recorder(cfg, model, data, state) if observe else None
        records = []
        with _threads(cfg.run.threads):  # speed only: results do not depend on it
            for t in (1, 2):
                state, r = run_round(cfg, model, state, data, t, observer=rec)
                records.append(r)
        out.append((state.to_arrays(), records))
    (a, ra), (b, rb) = out
    assert ra == rb
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def test_manifest_files_and_binfile_agree():
    """Every step of the manifest has its .npz with exactly the listed keys, in order; the
    binary tensor file holds the same tensors bit for bit and the manifest as its metadata."""
    d = exported()
    m = _manifest(d)
    tensors, meta = binfile.read(str(d / "conformance.bin"))
    assert meta == m
    names = [s["name"] for s in m["steps"]]
    assert names[:3] == ["inputs", "init", "r1_start"] and names[-1] == "r2_server"
    assert sorted(p.name for p in (d / "steps").iterdir()) == sorted(
        Path(s["file"]).name for s in m["steps"])
    n_tensors = 0
    for s in m["steps"]:
        _, arrays = load_step(d, s["name"])
        assert [k for k, _ in s["keys"]] == list(arrays)
        for key, cls in s["keys"]:
            assert cls in QUANTITIES and m["quantities"][cls]["kind"] == QUANTITIES[cls].kind
            b = tensors[f"{s['name']}/{key}"]
            a = arrays[key]
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            n_tensors += 1
    assert n_tensors == len(tensors)
    for cls, q in m["quantities"].items():
        assert q["rules"] and all(r.split("-")[0].isupper() and r.split("-")[1].isdigit()
                                  for r in q["rules"]), cls
        if q["kind"] == "float":
            assert (q["rtol"], q["atol"]) == (1e-10, 1e-15)


def test_inputs_are_the_engine_draws():
    """The random draws of the run are recorded as inputs: sampled clients (SAMPLE), epoch
    permutations (SHUFFLE), growth permutations (GROW) and the initial masks (MASK_INIT)."""
    d = exported()
    m = _manifest(d)
    cfg = scenario.scenario_config()
    _, inputs = load_step(d, "inputs")
    data, model, state = scenario.build(cfg)
    for t in (1, 2):
        clients = sample_clients(cfg.run.seed, t, cfg.data.num_clients,
                                 cfg.train.clients_per_round)
        assert np.array_equal(inputs[f"r{t}/clients"], clients)
        for k in clients.tolist():
            n = len(data.parts[k])
            assert np.array_equal(inputs[f"data/c{k}/y"], data.y_train[data.parts[k]])
            for e in range(cfg.train.local_epochs):
                assert np.array_equal(inputs[f"r{t}/c{k}/shuffle/e{e}"],
                                      stream(0, Purpose.SHUFFLE, t, k, e).permutation(n))
            if t == 2:
                assert np.array_equal(inputs[f"r2/c{k}/grow_order"],
                                      stream(0, Purpose.GROW, 2, k).permutation(n))
    for name in model.prunable:
        assert np.array_equal(inputs[f"init/mask/{name[:-7]}"], state.masks[name])
    assert m["scenario"]["params"].keys() == model.params.keys()


def _layer_input(arrays, arch, layer):
    i = next(j for j, L in enumerate(arch) if L.get("name") == layer)
    if i == 0:
        return arrays["x"]
    prev = sorted(k for k in arrays if k.startswith("act/"))[i - 1]
    return arrays[prev]


def test_dump_obeys_the_rules_it_records():
    """The golden vectors are coherent: ERK counts (ERK-2); every SAP cache keeps n_keep
    entries (SAP-2) in the auto format (CACHE-2), decodes to the layer input on the kept set
    (CACHE-3) and has the formula's bytes (CACHE-4); every local parameter update is the SGD
    step with the recorded lr, gradients and mask (LT-3, MASK-3), with μ_τ of BAE-4; the
    adjustment keeps every layer's nnz (PG-3, PG-7)."""
    d = exported()
    m = _manifest(d)
    sc = m["scenario"]
    arch, prunable = sc["architecture"], sc["prunable"]
    _, inputs = load_step(d, "inputs")
    _, init = load_step(d, "init")
    sizes = [math.prod(sc["params"][n]["shape"]) for n in prunable]
    assert init["erk_counts"].sum() == math.floor(Fraction("0.3") * sum(sizes) + Fraction(1, 2))
    masks = {n: inputs[f"init/mask/{n[:-7]}"] for n in prunable}
    assert init["erk_counts"].tolist() == [int(masks[n].sum()) for n in prunable]
    glob = {k[len("param/"):]: v for k, v in init.items() if k.startswith("param/")}
    params, n_local = None, 0
    for s in m["steps"]:
        _, a = load_step(d, s["name"])
        if s["kind"] == "round_start":
            start, params = a, dict(glob)
        elif s["kind"] == "local":
            n_local += 1
            if s["tau"] == 0:
                params = dict(glob)
            for L in arch:
                if L["kind"] not in ("conv", "linear"):
                    continue
                layer = L["name"]
                x_in = _layer_input(a, arch, layer).reshape(-1)
                kept = a[f"sap/{layer}/kept"]
                n_keep = keep_count(x_in.size, 0.7)
                assert kept.size == n_keep and np.all(np.diff(kept) > 0)
                nb = {f: format_nbytes(f, x_in.size, n_keep, 8) for f in ("dense", "bitmap",
                                                                          "index")}
                assert int(a[f"sap/{layer}/nbytes"]) == min(nb.values())
                assert a[f"sap/{layer}/format"] == 1  # bitmap is the smallest here
                bits = np.unpackbits(a[f"sap/{layer}/bits"], bitorder="little")
                assert np.array_equal(np.flatnonzero(bits), kept)
                assert np.array_equal(a[f"sap/{layer}/values"], x_in[kept])
                dropped = np.setdiff1d(np.arange(x_in.size), kept)
                assert np.abs(x_in[dropped]).max() <= np.abs(x_in[kept]).min()
            lr = float(a["lr"])
            if "marked_norm" in a:
                tau, T = s["tau"], sum(1 for e in m["steps"] if e["kind"] == "local" and
                                       (e["round"], e["client"]) == (s["round"], s["client"]))
                p = (2 * T - 2 * tau) / (2 * T - tau)
                beta = p * (2 / (1 + math.exp(-float(a["marked_norm"]))) - 1) * 0.1
                assert lr == pytest.approx(max(float(start["lr"]), beta), rel=1e-14)
            for name, before in params.items():
                g = a[f"grad/{name}"].copy()
                layer = name[:-7]
                if f"penalty_grad/{layer}" in a and name.endswith(".weight"):
                    g.reshape(-1)[start[f"marked/{layer}"]] += a[f"penalty_grad/{layer}"]
                if name in masks:
                    expect = (before - lr * (g * masks[name])) * masks[name]
                else:
                    expect = before - lr * g
                assert np.array_equal(a[f"param/{name}"], expect), (s["name"], name)
            params = {k[len("param/"):]: v for k, v in a.items() if k.startswith("param/")}
        elif s["kind"] == "server":
            glob = {k[len("agg/"):]: v for k, v in a.items() if k.startswith("agg/")}
            if "grow_counts" in start:
                for i, name in enumerate(prunable):
                    layer = name[:-7]
                    k = int(start["grow_counts"][i])
                    assert a[f"prune/{layer}"].size == a[f"grow/{layer}"].size == k
                    assert a[f"mask/{layer}"].sum() == masks[name].sum()
                    assert not np.any(masks[name].reshape(-1)[a[f"grow/{layer}"]])
                    masks[name] = a[f"mask/{layer}"]
                glob = {k[len("param/"):]: v for k, v in a.items() if k.startswith("param/")}
    assert n_local == 32


def test_export_refuses_to_clobber(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DumpError, match="already exists and is not empty; pass --overwrite"):
        export(tmp_path / "busy")
    with pytest.raises(DumpError, match="holds no manifest.json, so it is not a conformance dump"):
        export(tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    shutil.copytree(exported(), tmp_path / "dump")
    (tmp_path / "dump" / "notes.txt").write_text("mine")  # a user's file in a dump: kept
    with pytest.raises(DumpError, match=r"besides the dump it holds other files \(notes.txt\)"):
        export(tmp_path / "dump", overwrite=True, npz=False)
    assert (tmp_path / "dump" / "notes.txt").read_text() == "mine"
    (tmp_path / "dump" / "notes.txt").unlink()
    export(tmp_path / "dump", overwrite=True, npz=False)
    assert sorted(p.name for p in (tmp_path / "dump").iterdir()) == ["conformance.bin",
                                                                     "manifest.json"]
    assert not list(tmp_path.glob(".dump.*"))  # no temporary directory left behind


def test_scenario_guards():
    with pytest.raises(ValueError, match="adjusts the mask in round 2: it needs a dynamic method "
                                         "and sparse.delta_t = 2"):
        scenario.scenario_config(["sparse.delta_t=3"])
    with pytest.raises(ValueError, match="records every layer's SAP cache: keep sap.gamma > 0"):
        scenario.scenario_config(["sap.gamma=0.0", "sap.cache_policy=dense"])
    with pytest.raises(ConfigError, match="unknown key"):
        scenario.scenario_config(["bae.ramp=1"])


def test_committed_golden_dump_is_current():
    """refimpl/conformance/golden (manifest.json + conformance.bin) is what this checkout
    exports: same scenario, steps, keys and tolerances, every quantity within tolerance and
    every input and integer exactly equal. Regenerate it with
    `fedmef conformance export refimpl/conformance/golden --bin-only --overwrite`."""
    golden = Path(str(resources.files("refimpl.conformance") / "golden"))
    size = sum(p.stat().st_size for p in golden.iterdir())
    assert size < 2 * 1024 * 1024
    fresh, ref = _manifest(exported()), _manifest(golden)
    assert {k: v for k, v in fresh.items() if k != "software"} == \
        {k: v for k, v in ref.items() if k != "software"}
    report = check_dumps(Dump.open(exported()), Dump.open(golden))
    assert report.ok, report.format()


DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


def test_doc_lists_every_quantity_class():
    """docs/conformance.md's class table matches quantities.py (kinds and rules)."""
    table = re.findall(r"^\| ([a-z_.]+) \| (input|exact|float) \| ([A-Z0-9, -]+) \|$",
                       DOC.read_text("utf-8"), flags=re.M)
    rows = {name: (kind, tuple(rules.split(", "))) for name, kind, rules in table}
    assert rows == {n: (q.kind, q.rules) for n, q in QUANTITIES.items()}


def test_documented_c_reader_reads_the_golden_file(tmp_path):
    """The C reader of docs/conformance.md compiles warning-free and reads the committed golden
    tensor file as refimpl.conformance.binfile does."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler on PATH")
    [code] = re.findall(r"```c\n(/\* Minimal reader.*?)```", DOC.read_text("utf-8"), flags=re.S)
    (tmp_path / "fmread.c").write_text(code)
    build = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-o",
                            str(tmp_path / "fmread"), str(tmp_path / "fmread.c")],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    golden = Path(str(resources.files("refimpl.conformance") / "golden" / "conformance.bin"))
    run = subprocess.run([str(tmp_path / "fmread"), str(golden)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    tensors, _ = binfile.read(str(golden))
    kept = tensors["r1_c0_s0/sap/conv1/kept"]
    n, loss, size, first = re.fullmatch(
        r"(\d+) tensors; r1_c0_s0/loss = (\S+); sap/conv1/kept has (\d+) entries, first (\d+)",
        run.stdout.strip()).groups()
    assert (int(n), float(loss), int(size), int(first)) == (
        len(tensors), float(tensors["r1_c0_s0/loss"]), kept.size, int(kept[0]))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(golden.read_bytes()[:4096])
    assert subprocess.run([str(tmp_path / "fmread"), str(bad)], capture_output=True).returncode \
        == 1
