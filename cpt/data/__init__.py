"""From datasets to batches: examples, prompt templates, the synthetic benchmark, local files in public schemas,
tasks and general benchmarks, collation, the data module and the data check."""
