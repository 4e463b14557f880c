"""Online inference next to the database: model workers (nekrs_ml.serve.worker, `nekrs-ml
serve`) and model deployment (nekrs_ml.serve.deploy, `nekrs-ml deploy`, `nekrs-ml rollback`);
their commands are in nekrs_ml.cli. The solver side is nekrs_ml.inference (Python) and
nekrs_ml::InferenceClient (C++)."""
