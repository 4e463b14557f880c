"""The model store: the versioned registry in the database (registry), model files on disk
(model_file), deploying a file into the registry after a probe (deploy, `nekrs-ml deploy`), and
the AOTInductor packages and weights of in-process inference (aot)."""
