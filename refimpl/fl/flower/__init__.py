"""The Flower engine: the same FedMef run on real federated infrastructure (``flwr``, Flower's
Deployment Engine), byte-identical to the local engine. docs/flower.md has the commands.

A thin adapter with no FedMef logic of its own:

- :mod:`.apps`: the ServerApp, whose main loop is :func:`refimpl.fl.runner.run` (so sampling,
  the BAE-1 marked set, aggregation, prune-and-grow, checkpoints and the run directory are the
  local engine's own), with :class:`.server.FlowerClients` as the place where the clients'
  updates are computed; and the ClientApp, which runs the engine's local training for the
  client it is sent (:func:`refimpl.fl.wire.client_round`).
- :mod:`.messages`: :class:`refimpl.fl.wire.Packet` <-> Flower records, and what a message
  carried (payload against the MEM-4 ledger, and Flower's framing).
- :mod:`.launch`: ``fedmef run --engine flower`` on one machine (a SuperLink and SuperNodes on
  127.0.0.1, every process stopped by its PID afterwards) or against a running SuperLink.

``flwr`` is imported only by :mod:`.apps`, :mod:`.client`, :mod:`.messages` and :mod:`.server`
(that is, inside Flower's own processes, or on request); importing this package does not import
it. Install it with ``pip install 'fedmef-refimpl[flower]'`` (``flwr==1.42.0``, no Ray).

Importing this package sets ``FLWR_TELEMETRY_ENABLED=0`` and ``FLWR_DISABLE_UPDATE_CHECK=1`` in
the process environment unless they are set already: Flower reads them when it is first
imported, and a process that imports Flower through this adapter then sends nothing to Flower's
servers. Processes that Flower or a user starts get them from their environment (the launcher
sets them; docs/flower.md tells a user to).
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

__all__ = ["FLWR_VERSION", "require_flwr"]

#: The Flower release this adapter is written and tested against (pyproject extra ``flower``).
FLWR_VERSION = "1.42.0"


def require_flwr() -> None:
    """Raise a clear error when ``flwr`` is missing or is another release than
    :data:`FLWR_VERSION`."""
    from importlib import metadata

    try:
        version = metadata.version("flwr")
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"the Flower engine needs flwr=={FLWR_VERSION}, which is not "
                           f"installed; install it with `pip install 'fedmef-refimpl[flower]'` "
                           f"(or `pip install flwr=={FLWR_VERSION}`; not flwr[simulation])"
                           ) from None
    if version != FLWR_VERSION:
        raise RuntimeError(f"the Flower engine is written for flwr=={FLWR_VERSION}, found "
                           f"flwr {version}; install `pip install flwr=={FLWR_VERSION}`")
