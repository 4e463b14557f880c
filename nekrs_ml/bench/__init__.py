"""Benchmarks (`nekrs-ml bench NAME`, nekrs_ml.cli.bench): one module per benchmark, each
printing JSON records measured side by side with its baseline in the same run
(docs/benchmarks.md)."""
