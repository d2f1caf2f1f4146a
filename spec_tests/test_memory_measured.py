# covers: MEM-6
"""MEM-6: the process's own measured peak for one training step is measured as a peak and
reported beside the MEM-5 training peak, in the API and in ``fedmef memory --measure`` (text
and JSON).

A peak, not what is left at the end: while the optimizer step runs, the state the step started
with (parameters, masks, data) and a gradient for every parameter are alive at once, so the
measured peak is at least the state plus the bytes of one full set of gradients (NumPy
allocates each of them, so tracemalloc sees them all).
"""

import json
import re

import numpy as np

from refimpl import memory as M
from refimpl import models
from refimpl.cli import main as cli_main

ARGS = ["memory", "--model", "cnn", "--input", "1x28x28", "--batch", "8", "--density", "0.1",
        "--gamma", "0.7", "--measure"]


def test_measured_peak_holds_state_and_gradients_at_once():
    """MEM-6: peak >= state + Σ parameter bytes (the gradients of the step, all alive when the
    optimizer runs), for float32 and float64 and with and without masks."""
    for density, dtype in ((0.1, np.float32), (1.0, np.float64)):
        got = M.measure_step("cnn", (1, 28, 28), 8, density=density, gamma=0.7, dtype=dtype)
        model = models.build("cnn", 1, 10, dtype=dtype)
        grads = sum(v.nbytes for v in model.params.values())
        assert got["state"] > 0
        assert got["peak"] >= got["state"] + grads, (density, dtype, got, grads)


def test_cli_reports_the_measured_peak_beside_the_training_peak(capsys):
    """MEM-6 on the command line: with --measure the text names the measured peak (MEM-6) after
    the training peak (MEM-5), and the JSON carries it under "measured" beside the ledger's
    totals; without --measure there is no measured figure."""
    assert cli_main(ARGS) == 0
    text = capsys.readouterr().out
    peak = re.search(r"^training peak \(MEM-5.*?: ([\d,]+) bytes", text, flags=re.M)
    measured = re.search(r"^measured peak of this implementation \(MEM-6.*?: ([\d,]+) bytes",
                         text, flags=re.M)
    assert peak and measured, text
    assert peak.start() < measured.start()
    assert int(measured.group(1).replace(",", "")) > 0

    assert cli_main(ARGS + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d["measured"]) == {"peak", "state"}
    assert d["measured"]["peak"] >= d["measured"]["state"] > 0
    assert d["totals"]["training_peak"] == d["timeline"]["peak"]["bytes"] > 0

    assert cli_main(ARGS[:-1] + ["--json"]) == 0
    assert "measured" not in json.loads(capsys.readouterr().out)
    assert cli_main(ARGS[:-1]) == 0
    assert "MEM-6" not in capsys.readouterr().out
