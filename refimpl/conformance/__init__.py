"""Cross-implementation conformance kit (docs/conformance.md): a tiny deterministic FedMef
scenario recorded step by step from the real engine (:mod:`.scenario`, :mod:`.recorder`,
:mod:`.export`), its dump layout and binary tensor file (:mod:`.dump`, :mod:`.binfile`), the
quantity classes with their SPEC rules and tolerances (:mod:`.quantities`), and the checker
that reports the first divergence of every step (:mod:`.check`, ``fedmef conformance``)."""
