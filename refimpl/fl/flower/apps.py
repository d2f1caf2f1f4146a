"""The Flower app: ``server_app`` and ``client_app`` (the components a Flower app's
``pyproject.toml`` names, ``refimpl.fl.flower.apps:server_app`` and ``:client_app``).

The ServerApp's main loop is the local engine's: :func:`refimpl.fl.runner.run` (run directory,
checkpoints, resume, metrics, summary, plots) with :func:`refimpl.fl.engine.run_round`, whose
clients are :class:`.server.FlowerClients`. Its run config (``[tool.flwr.app.config]``, written
by :func:`refimpl.fl.flower.launch.write_app`):

==================  ============================================================================
``config``          the resolved FedMef configuration as TOML text (empty with ``resume``)
``out``             the run directory, an absolute path on the SuperLink's machine
``resume``          continue the run in ``out`` from its newest checkpoint (bool)
``overwrite``       replace an existing run directory (bool)
``node-timeout``    seconds to wait for a SuperNode that serves a sampled client
``min-nodes``       SuperNodes to wait for before the first round (at most ``node-timeout``)
``result-file``     where to write the outcome as JSON (empty: nowhere); the one-machine
                    launcher reads it
==================  ============================================================================
"""

from __future__ import annotations

import functools
import json
import tomllib
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..config import config_from_dict
from ..runner import run
from ..store import atomic_write_text
from . import client
from .server import FlowerClients

__all__ = ["server_app", "client_app", "RUN_CONFIG"]

#: The ServerApp's run-config keys and their defaults (module docstring).
RUN_CONFIG = {"config": "", "out": "", "resume": False, "overwrite": False,
              "node-timeout": 120.0, "min-nodes": 1, "result-file": ""}

server_app = ServerApp()
client_app = ClientApp()


def _log(*args) -> None:
    print(*args, flush=True)


def _options(run_config) -> dict:
    opts = dict(RUN_CONFIG)
    opts.update({k: v for k, v in dict(run_config).items() if k in RUN_CONFIG})
    if not opts["out"] or not Path(opts["out"]).is_absolute():
        raise ValueError(f"run config out = {opts['out']!r}: the ServerApp needs the run "
                         f"directory as an absolute path on the SuperLink's machine")
    if not opts["resume"] and not opts["config"]:
        raise ValueError("run config config is empty: a new run needs its configuration (TOML "
                         "text); set resume = true to continue the run in out")
    return opts


def _flower_clients(grid, node_timeout: float, min_nodes: int, cfg, model, data
                    ) -> FlowerClients:
    return FlowerClients(grid, cfg, model, data, node_timeout=node_timeout,
                         min_nodes=min_nodes, log=_log)


def _write_result(path: str, result: dict) -> None:
    if path:
        atomic_write_text(Path(path), json.dumps(result, indent=1) + "\n")


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """A FedMef run whose clients train on the SuperNodes (module docstring)."""
    result_file = str(dict(context.run_config).get("result-file", ""))
    try:
        opts = _options(context.run_config)
        clients = functools.partial(_flower_clients, grid, float(opts["node-timeout"]),
                                    int(opts["min-nodes"]))
        cfg = None if opts["resume"] else config_from_dict(tomllib.loads(opts["config"]))
        summary = run(cfg, opts["out"], resume=bool(opts["resume"]),
                      overwrite=bool(opts["overwrite"]), progress=False, log=_log,
                      clients=clients)
    except BaseException as e:
        msg = str(e).strip() or type(e).__name__
        _write_result(result_file, {"ok": False, "type": type(e).__name__, "error": msg})
        raise
    _write_result(result_file, {"ok": True, "summary": summary})


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    return client.handshake(msg, context)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    return client.train(msg, context)
