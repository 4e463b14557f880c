"""Online inference next to the database: the model workers (`nekrs-ml serve`). worker holds
the serving loop; loading turns a registry version into a model that evaluates batches;
io_threads are the threads that pop requests, push replies and keep the heartbeat; envelope is
the worker's side of the inference messages; allocator the process's allocator settings. The
models come from the registry (nekrs_ml.models); the solver side is nekrs_ml::InferenceClient
(C++; from Python, nekrs_ml.inference)."""
