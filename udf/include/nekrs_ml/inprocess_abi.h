/* The boundary between libnekrsml and the in-process backend libnekrsml_torch, which libnekrsml
 * loads with dlopen (nekrs_ml/inprocess.hpp). Plain C only: opaque handles, pointers, sizes,
 * integer codes and `const char*`. No C++ type, exception or allocation crosses it in either
 * direction, so the two libraries may come from different compilers or C++ runtimes (a site's
 * compiler module, or a toolchain that links libstdc++ statically, beside the libstdc++ of
 * libtorch). Bytes the backend needs from the database come through the fetch callback, which
 * libnekrsml implements with its own client.
 *
 * libnekrsml checks nkml_inprocess_abi_version() before anything else and refuses a library of
 * another version with a message naming both. Change NKML_INPROCESS_ABI_VERSION whenever a
 * signature or a struct below changes.
 */
#ifndef NEKRS_ML_INPROCESS_ABI_H
#define NEKRS_ML_INPROCESS_ABI_H

#include <stddef.h>
#include <stdint.h>

#include "nekrs_ml.h" /* NKML_OK, the NKML_E_* status codes and the NKML_<dtype> codes */

#ifdef __cplusplus
extern "C" {
#endif

#define NKML_INPROCESS_ABI_VERSION 1

/* Reads `key` from the database. Returns NKML_OK with *data and *size set (the bytes stay valid
 * until the next call with the same context), NKML_E_NOT_FOUND when the key does not exist, or
 * another NKML_E_* code when the database could not be read (its message stays with the
 * caller's side, which reports it). */
typedef int (*nkml_inprocess_fetch_fn)(void* context, const char* key, const char** data,
                                       size_t* size);
/* A warning of the backend (one line, no newline). */
typedef void (*nkml_inprocess_log_fn)(void* context, const char* message);

typedef struct {
  uint32_t abi_version;       /* NKML_INPROCESS_ABI_VERSION of the caller */
  const char* ns;             /* run namespace (key prefix) */
  const char* device;         /* cpu, cuda or cuda:N */
  int threads;                /* torch intra-op threads of this process */
  double reload_interval_s;   /* how often run() checks the registry for a new version */
  nkml_inprocess_fetch_fn fetch;
  void* fetch_context;
  nkml_inprocess_log_fn log;  /* NULL: warnings go to stderr */
  void* log_context;
} nkml_inprocess_options;

typedef struct {
  uint64_t rows, columns; /* the predictions written: float32 [rows, columns] */
  uint64_t version;       /* the model version that produced them */
  double seconds;         /* wall time of the call */
} nkml_inprocess_result;

typedef struct nkml_inprocess_backend nkml_inprocess_backend;

/* --- the entry points libnekrsml_torch exports (resolved with dlsym) ---------------------- */
uint32_t nkml_inprocess_abi_version(void);
/* The torch release the library was built with, e.g. "2.13.0" (a static string). */
const char* nkml_inprocess_torch_version(void);
/* Creates a backend. On failure returns an NKML_E_* code and writes the reason (with the fix)
 * into error[error_capacity], NUL-terminated. */
int nkml_inprocess_create(const nkml_inprocess_options* options, nkml_inprocess_backend** backend,
                          char* error, size_t error_capacity);
void nkml_inprocess_destroy(nkml_inprocess_backend* backend);
/* Evaluates `model` (its current version, following the registry) on inputs of wire dtype
 * `dtype` and shape shape[0..ndim) and writes float32 predictions into outputs
 * (capacity_bytes long). on_device: inputs and outputs are memory of the backend's device;
 * stream: the CUDA stream to run on (NULL: the current one). NKML_E_PACKAGE_MISSING: no package
 * of the current version's graph for this device and torch yet (nothing loaded before). */
int nkml_inprocess_run(nkml_inprocess_backend* backend, const char* model, int dtype,
                       const uint64_t* shape, int ndim, const void* inputs, void* outputs,
                       size_t capacity_bytes, int on_device, void* stream,
                       nkml_inprocess_result* result);
/* Checks the registry for a newer version now; *version: the version in use afterwards (0: none). */
int nkml_inprocess_refresh(nkml_inprocess_backend* backend, const char* model, uint64_t* version);
/* Seconds of the last weight swap, or 0. */
double nkml_inprocess_last_swap_seconds(const nkml_inprocess_backend* backend);
/* What the backend holds for `model`, as a JSON object written into json[capacity]
 * (NUL-terminated; NKML_E_CONFIG when it does not fit): {"state": "loaded" | "waiting" |
 * "refused" | "unknown", "version": V, "graph": G, "device": D, "reason": TEXT}. */
int nkml_inprocess_model_state(nkml_inprocess_backend* backend, const char* model, char* json,
                               size_t capacity);
/* The message of the backend's last failure ("" after success); valid until its next call. */
const char* nkml_inprocess_last_error(const nkml_inprocess_backend* backend);

#ifdef __cplusplus
}
#endif

#endif /* NEKRS_ML_INPROCESS_ABI_H */
