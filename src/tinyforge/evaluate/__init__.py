"""Benchmark scoring: output comparison with evalplus semantics (``compare``) and statistics (``metrics``)."""

from tinyforge.evaluate.metrics import mcnemar, pass_at_k, pass_at_k_table, wilson_interval

__all__ = ["mcnemar", "pass_at_k", "pass_at_k_table", "wilson_interval"]
