"""Cross-implementation conformance kit: golden vectors, a binary tensor file, a checker."""
