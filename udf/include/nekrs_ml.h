/* nekrs_ml C API: the client, the training stream and online inference of libnekrsml for
 * solvers that are not C++ (C, and Fortran through the module nekrs_ml.f90 beside this header).
 *
 * Every call returns a status (NKML_OK = 0, or an NKML_E_* code naming the kind of failure);
 * the message of the last failure of the calling thread is nkml_last_error(). No C++ exception
 * crosses this boundary. Handles are opaque; free each with its nkml_*_free (NULL is allowed).
 * Tensors are C-ordered (row-major) arrays in the wire format of docs/protocol.md, so C, C++
 * and Python clients read each other's tensors. Link with -lnekrsml (`nekrs-ml config --libs`).
 */
#ifndef NEKRS_ML_H
#define NEKRS_ML_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes */
#define NKML_OK 0
#define NKML_E_ERROR 1              /* any other failure */
#define NKML_E_CONNECTION 2         /* server unreachable, connection lost, authentication */
#define NKML_E_TIMEOUT 3            /* a call did not complete within its timeout */
#define NKML_E_SERVER 4             /* the server answered with an error (e.g. full) */
#define NKML_E_NOT_FOUND 5          /* key or model does not exist */
#define NKML_E_FORMAT 6             /* not a tensor, or not the dtype/shape/size asked for */
#define NKML_E_CONFIG 7             /* invalid argument or option */
#define NKML_E_MODEL 8              /* the model failed or refused the request */
#define NKML_E_WORKER_UNAVAILABLE 9 /* no live model worker serves this rank */
#define NKML_E_PACKAGE_MISSING 10   /* no in-process package of the model's graph (yet) */

/* Element types (the wire format's dtype codes) */
#define NKML_FLOAT32 1
#define NKML_FLOAT64 2
#define NKML_INT32 5
#define NKML_INT64 6

#define NKML_MAX_DIMS 8

typedef struct nkml_client nkml_client;
typedef struct nkml_stream nkml_stream;
typedef struct nkml_inference nkml_inference;

/* The message of the calling thread's last failure ("" after success). */
const char* nkml_last_error(void);
/* The library version, e.g. "0.1.0". */
const char* nkml_version(void);

/* --- client ------------------------------------------------------------------------------- */
/* Connects with NEKRS_ML_ADDRESSES, NEKRS_ML_PASSWORD_FILE and NEKRS_ML_MODE (set by
 * `nekrs-ml run` and `nekrs-ml db env`). */
int nkml_client_from_env(nkml_client** client);
/* addresses: comma-separated host:port or unix:/path; password: NULL or "" for none;
 * cluster: nonzero for a Redis Cluster (the addresses are seeds). */
int nkml_client_connect(const char* addresses, const char* password, int cluster,
                        nkml_client** client);
void nkml_client_free(nkml_client* client);
/* Timeout of every call, in seconds: finite, > 0 and <= 1e6 (NKML_E_CONFIG otherwise). */
int nkml_client_set_timeout(nkml_client* client, double seconds);

/* Stores `data` (dtype, ndim <= NKML_MAX_DIMS dimensions `shape`) under `key`. */
int nkml_put_tensor(nkml_client* client, const char* key, int dtype, int ndim,
                    const int64_t* shape, const void* data);
/* The dtype and shape of the tensor under `key` (shape holds NKML_MAX_DIMS entries). */
int nkml_tensor_info(nkml_client* client, const char* key, int* dtype, int* ndim,
                     int64_t* shape);
/* Reads the tensor under `key` into `out` (`capacity_bytes` long); it must have `dtype`.
 * NKML_E_FORMAT when it has another dtype or does not fit. */
int nkml_get_tensor(nkml_client* client, const char* key, int dtype, void* out,
                    size_t capacity_bytes);
int nkml_key_exists(nkml_client* client, const char* key, int* exists);
int nkml_delete(nkml_client* client, const char* key);

/* --- training stream (docs/protocol.md, "Training stream") --------------------------------- */
/* A solver rank's stream in namespace `ns`: at most `max_snapshots` kept (the oldest dropped
 * beyond that). */
int nkml_stream_open(nkml_client* client, const char* ns, int rank, int max_snapshots,
                     nkml_stream** stream);
void nkml_stream_free(nkml_stream* stream);
/* One snapshot: inputs [n, n_in] and targets [n, n_out], both of `dtype` (NKML_FLOAT32 or
 * NKML_FLOAT64). `written` (may be NULL) is 1 when stored, 0 when dropped (a full database). */
int nkml_stream_put(nkml_stream* stream, long step, double time, int dtype, int64_t n,
                    int64_t n_in, const void* inputs, int64_t n_out, const void* targets,
                    int* written);
/* Whether the trainer asked the solver to stop; marking the solver done (once per node). */
int nkml_stop_requested(nkml_client* client, const char* ns, int* requested);
int nkml_mark_done(nkml_client* client, const char* ns);

/* --- inference (docs/protocol.md, "Inference requests") ------------------------------------ */
/* Rank `rank` talks to model worker rank mod `workers`; `timeout` in seconds per call (finite,
 * > 0 and <= 1e6). */
int nkml_inference_open(nkml_client* client, const char* ns, int rank, int workers,
                        double timeout, nkml_inference** inference);
void nkml_inference_free(nkml_inference* inference);
/* Predictions [rows, n_out] (float32) of `model` for inputs [rows, n_in] (float32); `version`
 * (may be NULL) receives the model version that produced them. */
int nkml_inference_run(nkml_inference* inference, const char* model, int64_t rows, int64_t n_in,
                       const float* inputs, int64_t n_out, float* outputs, uint64_t* version);

#ifdef __cplusplus
}
#endif

#endif /* NEKRS_ML_H */
