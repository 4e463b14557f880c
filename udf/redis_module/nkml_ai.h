/* nkml_ai: what its source files share (one module, nkml_ai.so; nkml_ai.c describes it). */
#ifndef NKML_AI_H
#define NKML_AI_H

#include "redis_module_api.h"

#include "nekrs_ml/protocol.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TENSOR_HEADER NKML_TENSOR_FIXED_HEADER_BYTES
#define TENSOR_MAX_RANK NKML_TENSOR_MAX_RANK
/* A C type's class, from the C type column of nekrs_ml/protocol.tsv. */
#define CTYPE_IS_FLOAT(ctype) ((ctype)0.5 != 0)
#define CTYPE_IS_SIGNED(ctype) ((ctype)-1 < 0)
#define KIND_MODEL 1
#define KIND_SCRIPT 2

typedef struct {
    const char *name; /* as RedisAI spells it */
    int code;         /* docs/protocol.md dtype code */
    size_t itemsize;
    int is_float;
    int is_signed;
} DType;

typedef struct {
    const DType *dtype;
    int rank;
    uint64_t shape[TENSOR_MAX_RANK];
    const char *data;
    size_t nbytes;
} TensorView;

typedef struct {
    int kind;
    uint64_t store_id;
    const char *backend, *device, *tag;
    size_t backend_len, device_len, tag_len;
    uint64_t batchsize, minbatchsize, minbatchtimeout;
    uint32_t n_inputs, n_outputs;       /* names (models) / entry points (scripts): n_inputs */
    const char *names;                  /* n_inputs + n_outputs strings, u32 length + bytes */
    size_t names_len;
    const char *payload;                /* model blob or script source */
    size_t payload_len;
} Record;

typedef struct {
    int kind;
    RedisModuleString *backend, *device, *tag;
    long long batchsize, minbatchsize, minbatchtimeout;
    RedisModuleString **inputs, **outputs; /* models: names; scripts: entry points in inputs */
    int n_inputs, n_outputs;
    RedisModuleString **payload;           /* BLOB chunks or the SOURCE */
    int n_payload;
} RecordArgs;

typedef struct Stats {
    char *key;
    size_t key_len;
    uint64_t store_id;
    long long duration_us, samples, calls, errors;
    struct Stats *next;
} Stats;

typedef struct {
    int in_first, n_in, out_first, n_out;
    long long timeout_ms;
    int keys_first, n_keys, n_args;
} IOArgs;

/* --- nkml_ai.c ------------------------------------------------------------------------------- */
extern long long execute_timeout_ms;
extern long long max_value_bytes;
extern long long max_job_bytes;
extern long long model_chunk_size;

/* --- nkml_ai_tensor.c ------------------------------------------------------------------------ */
const DType *dtype_by_name(const char *s, size_t len);
void put_u64(char *p, uint64_t v);
uint64_t get_u64(const char *p);
void put_u32(char *p, uint32_t v);
uint32_t get_u32(const char *p);
const char *tensor_parse(const char *value, size_t len, TensorView *t);

/* --- nkml_ai_store.c ------------------------------------------------------------------------- */
extern uint64_t next_store_id;
int arg_is(RedisModuleString *arg, const char *word);
void *nk_alloc(size_t n);
void *nk_calloc(size_t n, size_t size);
void nk_free(void *p);
char *copy_bytes(const char *s, size_t len);
int reply_verrorf(RedisModuleCtx *ctx, const char *fmt, va_list ap);
int reply_errorf(RedisModuleCtx *ctx, const char *fmt, ...);
int reply_text(RedisModuleCtx *ctx, const char *text);
const char *arg_text(RedisModuleString *arg);
int check_value_size(RedisModuleCtx *ctx, const char *command, RedisModuleString *keyname,
                     const char *what, size_t total);
RedisModuleKey *open_for_store(RedisModuleCtx *ctx, RedisModuleString *keyname);
void value_append(RedisModuleCtx *ctx, RedisModuleString *value, const char *p, size_t len);
void value_store(RedisModuleCtx *ctx, RedisModuleKey *key, RedisModuleString *value);
int record_parse(const char *v, size_t len, Record *r);
void record_name(const Record *r, uint32_t index, const char **s, size_t *len);
RedisModuleKey *open_record(RedisModuleCtx *ctx, RedisModuleString *keyname, int kind,
                            int mode, Record *r);
int store_record(RedisModuleCtx *ctx, const char *command, RedisModuleString *keyname,
                 const RecordArgs *a);
Stats *stats_for(const char *key, size_t len, uint64_t store_id, int create);
void stats_drop(const char *key, size_t len);
int stats_count_entries(void);

/* --- nkml_ai_jobs.c -------------------------------------------------------------------------- */
int queue_job(RedisModuleCtx *ctx, int kind, RedisModuleString *keyname, uint64_t store_id,
              RedisModuleString *function, RedisModuleString **inputs, int n_in,
              RedisModuleString **outputs, int n_out, long long timeout_ms);
int parse_io(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, int pos, int counted,
             int allow_keys_args, IOArgs *io);
void report_io_keys(RedisModuleCtx *ctx, const IOArgs *io);
int cmd_take(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_done(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_workers(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
void on_client_change(RedisModuleCtx *ctx, RedisModuleEvent eid, uint64_t subevent, void *data);

/* --- nkml_ai_commands.c ---------------------------------------------------------------------- */
int cmd_tensorset(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_tensorget(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_modelstore(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_modelget(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_modeldel(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_scriptdel(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_modelexecute(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_modelrun(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_scriptset(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_scriptstore(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_scriptget(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_scriptrun(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_scriptexecute(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_info(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_config(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int cmd_unsupported(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);

#endif /* NKML_AI_H */
