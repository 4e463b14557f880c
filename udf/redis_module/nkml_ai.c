/* nkml_ai: the RedisAI commands SmartRedis 0.6 sends, answered by a stock redis-server.
 *
 * Tensors are stored as values of nekrs_ml's tensor format (docs/protocol.md), so SmartRedis
 * and nekrs_ml clients read each other's tensors. Models and scripts are stored as records
 * (docs/protocol.md, "RedisAI compatibility") under the key the client names. Execution is not
 * done here: AI.MODELEXECUTE and the script commands block the calling client (not the server)
 * and queue a job; a nekrs_ml model worker takes jobs with NKML.AI.TAKE and answers with
 * NKML.AI.DONE, which writes the outputs and unblocks the caller. A job ends with an error
 * reply when its time runs out, when the worker that took it disconnects, or when no worker
 * is connected at all: a caller never hangs. A caller or a waiting worker that is unblocked
 * (CLIENT UNBLOCK) or disconnects leaves no job or waiter behind.
 *
 * Every store validates its whole input and builds the new value before it replaces the old
 * one: a refused store leaves the key as it was. Values are built whole (a model sent in
 * chunks is one value), so there is no 512 MB limit of the module API's StringTruncate; the
 * limit is MAX_VALUE_BYTES. Job memory (the inputs a job holds until a worker takes it) is
 * allocated by the server's allocator, so it counts in used_memory and against maxmemory,
 * and all jobs together hold at most MAX_JOB_BYTES. Execution outputs are replicated and
 * written to the AOF as SETs, like any write.
 *
 * Load arguments (pairs): EXECUTE_TIMEOUT <ms> (longest a job may wait, default 60000; a
 * client's TIMEOUT may only shorten it), MAX_VALUE_BYTES <n> (largest tensor, model or script
 * value, default 2 GiB), MAX_JOB_BYTES <n> (input bytes all queued jobs may hold, default
 * 1 GiB). */
#include "redis_module_api.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODULE_NAME "nkml_ai"
#define MODULE_VERSION 1

/* --- tensors: nekrs_ml's format ------------------------------------------------------------ */
#define TENSOR_HEADER 8
#define TENSOR_MAX_RANK 8

typedef struct {
    const char *name; /* as RedisAI spells it */
    int code;         /* docs/protocol.md dtype code */
    size_t itemsize;
    int is_float;
    int is_signed;
} DType;

static const DType DTYPES[] = {
    {"FLOAT", 1, 4, 1, 1},  {"DOUBLE", 2, 8, 1, 1}, {"INT8", 3, 1, 0, 1},
    {"INT16", 4, 2, 0, 1},  {"INT32", 5, 4, 0, 1},  {"INT64", 6, 8, 0, 1},
    {"UINT8", 7, 1, 0, 0},  {"UINT16", 8, 2, 0, 0},
};
#define N_DTYPES (sizeof(DTYPES) / sizeof(DTYPES[0]))

static const DType *dtype_by_name(const char *s, size_t len) {
    for (size_t i = 0; i < N_DTYPES; i++) {
        if (strlen(DTYPES[i].name) == len && strncasecmp(DTYPES[i].name, s, len) == 0)
            return &DTYPES[i];
    }
    return NULL;
}

static const DType *dtype_by_code(int code) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (DTYPES[i].code == code) return &DTYPES[i];
    return NULL;
}

static void put_u64(char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (char)((v >> (8 * i)) & 0xff);
}

static uint64_t get_u64(const char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | (unsigned char)p[i];
    return v;
}

static void put_u32(char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (char)((v >> (8 * i)) & 0xff);
}

static uint32_t get_u32(const char *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | (unsigned char)p[i];
    return v;
}

typedef struct {
    const DType *dtype;
    int rank;
    uint64_t shape[TENSOR_MAX_RANK];
    const char *data;
    size_t nbytes;
} TensorView;

/* NULL when `value` is a whole, valid tensor; else why not. */
static const char *tensor_parse(const char *value, size_t len, TensorView *t) {
    if (len < TENSOR_HEADER || memcmp(value, "NKML", 4) != 0) return "not a nekrs_ml tensor";
    if (value[4] != 1) return "tensor format version is not 1";
    t->dtype = dtype_by_code((unsigned char)value[5]);
    if (!t->dtype) return "unknown tensor dtype code";
    t->rank = (unsigned char)value[6];
    if (t->rank > TENSOR_MAX_RANK || value[7] != 0) return "bad tensor header";
    if (len < TENSOR_HEADER + 8 * (size_t)t->rank) return "truncated tensor header";
    uint64_t count = 1;
    for (int i = 0; i < t->rank; i++) {
        t->shape[i] = get_u64(value + TENSOR_HEADER + 8 * i);
        if (t->shape[i] != 0 && count > UINT64_MAX / t->shape[i]) return "tensor shape overflows";
        count *= t->shape[i];
    }
    size_t header = TENSOR_HEADER + 8 * (size_t)t->rank;
    if (count > (UINT64_MAX - header) / t->dtype->itemsize ||
        header + count * t->dtype->itemsize != len)
        return "tensor data length does not match its header";
    t->data = value + header;
    t->nbytes = count * t->dtype->itemsize;
    return NULL;
}

/* --- small helpers ---------------------------------------------------------------------------- */
static int arg_is(RedisModuleString *arg, const char *word) {
    size_t len;
    const char *s = RedisModule_StringPtrLen(arg, &len);
    return strlen(word) == len && strncasecmp(s, word, len) == 0;
}

/* Module memory comes from the server's allocator (RedisModule_TryAlloc): it is counted in
 * used_memory, so maxmemory applies to it, and a failed allocation is NULL, not an abort. */
static void *nk_alloc(size_t n) {
    return RedisModule_TryAlloc(n ? n : 1);
}

static void *nk_calloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = nk_alloc(n * size);
    if (p) memset(p, 0, n * size);
    return p;
}

static void nk_free(void *p) {
    if (p) RedisModule_Free(p);
}

static char *copy_bytes(const char *s, size_t len) {
    char *p = nk_alloc(len + 1);
    if (!p) return NULL;
    memcpy(p, s, len);
    p[len] = 0;
    return p;
}

static int reply_verrorf(RedisModuleCtx *ctx, const char *fmt, va_list ap) {
    char text[512];
    vsnprintf(text, sizeof text, fmt, ap);
    return RedisModule_ReplyWithError(ctx, text);
}

static int reply_errorf(RedisModuleCtx *ctx, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    reply_verrorf(ctx, fmt, ap);
    va_end(ap);
    return REDISMODULE_OK;
}

/* Fields of array replies are bulk strings, as RedisAI sends them (SmartRedis reads them so). */
static int reply_text(RedisModuleCtx *ctx, const char *text) {
    return RedisModule_ReplyWithStringBuffer(ctx, text, strlen(text));
}

static const char *arg_text(RedisModuleString *arg) {
    return RedisModule_StringPtrLen(arg, NULL);
}

/* --- configuration (load arguments) ----------------------------------------------------------- */
static long long execute_timeout_ms = 60000;
static long long max_value_bytes = 2LL * 1024 * 1024 * 1024;  /* MAX_VALUE_BYTES */
static long long max_job_bytes = 1LL * 1024 * 1024 * 1024;    /* MAX_JOB_BYTES */
static long long model_chunk_size = 511 * 1024 * 1024;        /* RedisAI's default */

/* --- stores: validate, build the whole new value, and only then replace the old one ---------- */

/* 0 when a value of `total` bytes may be stored; else replies why not and returns -1. */
static int check_value_size(RedisModuleCtx *ctx, const char *command, RedisModuleString *keyname,
                            const char *what, size_t total) {
    if ((unsigned long long)total <= (unsigned long long)max_value_bytes) return 0;
    reply_errorf(ctx, "ERR %s %s: the %s takes %zu bytes, over this server's limit of %lld bytes "
                      "for one value (nkml_ai's MAX_VALUE_BYTES load argument); the key is unchanged",
                 command, arg_text(keyname), what, total, max_value_bytes);
    return -1;
}

/* `keyname` opened for writing when it is empty or holds a string; else replies WRONGTYPE and
 * returns NULL. */
static RedisModuleKey *open_for_store(RedisModuleCtx *ctx, RedisModuleString *keyname) {
    RedisModuleKey *key = RedisModule_OpenKey(ctx, keyname, REDISMODULE_READ | REDISMODULE_WRITE);
    int type = RedisModule_KeyType(key);
    if (type != REDISMODULE_KEYTYPE_EMPTY && type != REDISMODULE_KEYTYPE_STRING) {
        RedisModule_CloseKey(key);
        reply_errorf(ctx, "WRONGTYPE key %s holds another Redis type; the key is unchanged",
                     arg_text(keyname));
        return NULL;
    }
    return key;
}

/* Appends to a value under construction (a string this module created: never shared). */
static void value_append(RedisModuleCtx *ctx, RedisModuleString *value, const char *p, size_t len) {
    if (len) RedisModule_StringAppendBuffer(ctx, value, p, len);
}

/* Replaces the value of the open `key` with the built `value` (whose reference it takes). */
static void value_store(RedisModuleCtx *ctx, RedisModuleKey *key, RedisModuleString *value) {
    RedisModule_TrimStringAllocation(value);
    RedisModule_StringSet(key, value);
    RedisModule_FreeString(ctx, value);
}

/* --- model and script records --------------------------------------------------------------- */
#define RECORD_MAGIC "NKAI"
#define KIND_MODEL 1
#define KIND_SCRIPT 2

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

static uint64_t next_store_id;

/* Appends a u32-length-prefixed string; returns the new offset. */
static size_t put_str(char *out, size_t off, const char *s, size_t len) {
    if (out) {
        put_u32(out + off, (uint32_t)len);
        memcpy(out + off + 4, s, len);
    }
    return off + 4 + len;
}

static int get_str(const char *v, size_t len, size_t *off, const char **s, size_t *slen) {
    if (*off + 4 > len) return -1;
    *slen = get_u32(v + *off);
    if (*off + 4 + *slen > len) return -1;
    *s = v + *off + 4;
    *off += 4 + *slen;
    return 0;
}

static int record_parse(const char *v, size_t len, Record *r) {
    if (len < 16 || memcmp(v, RECORD_MAGIC, 4) != 0 || v[4] != 1) return -1;
    r->kind = v[5];
    if (r->kind != KIND_MODEL && r->kind != KIND_SCRIPT) return -1;
    r->store_id = get_u64(v + 8);
    size_t off = 16;
    if (get_str(v, len, &off, &r->backend, &r->backend_len) ||
        get_str(v, len, &off, &r->device, &r->device_len) ||
        get_str(v, len, &off, &r->tag, &r->tag_len))
        return -1;
    if (off + 32 > len) return -1;
    r->batchsize = get_u64(v + off);
    r->minbatchsize = get_u64(v + off + 8);
    r->minbatchtimeout = get_u64(v + off + 16);
    r->n_inputs = get_u32(v + off + 24);
    r->n_outputs = get_u32(v + off + 28);
    off += 32;
    r->names = v + off;
    for (uint32_t i = 0; i < r->n_inputs + r->n_outputs; i++) {
        const char *s;
        size_t slen;
        if (get_str(v, len, &off, &s, &slen)) return -1;
    }
    r->names_len = (size_t)(v + off - r->names);
    r->payload = v + off;
    r->payload_len = len - off;
    return 0;
}

/* The i-th name of a record's name list. */
static void record_name(const Record *r, uint32_t index, const char **s, size_t *len) {
    size_t off = 0;
    *s = "";
    *len = 0;
    for (uint32_t i = 0; i <= index; i++) get_str(r->names, r->names_len, &off, s, len);
}

/* Opens `keyname` and reads the record of `kind` there. Replies the error itself and returns
 * NULL when there is none; the caller closes the returned key. */
static RedisModuleKey *open_record(RedisModuleCtx *ctx, RedisModuleString *keyname, int kind,
                                   int mode, Record *r) {
    RedisModuleKey *key = RedisModule_OpenKey(ctx, keyname, mode);
    const char *what = kind == KIND_MODEL ? "model" : "script";
    if (RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_EMPTY) {
        RedisModule_CloseKey(key);
        reply_errorf(ctx, "ERR %s key is empty", what);
        return NULL;
    }
    size_t len = 0;
    const char *v = RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_STRING
                        ? RedisModule_StringDMA(key, &len, REDISMODULE_READ)
                        : NULL;
    if (!v || record_parse(v, len, r) != 0 || r->kind != kind) {
        RedisModule_CloseKey(key);
        reply_errorf(ctx, "WRONGTYPE key %s does not hold a %s", arg_text(keyname), what);
        return NULL;
    }
    return key;
}

typedef struct {
    int kind;
    RedisModuleString *backend, *device, *tag;
    long long batchsize, minbatchsize, minbatchtimeout;
    RedisModuleString **inputs, **outputs; /* models: names; scripts: entry points in inputs */
    int n_inputs, n_outputs;
    RedisModuleString **payload;           /* BLOB chunks or the SOURCE */
    int n_payload;
} RecordArgs;

static void stats_drop(const char *key, size_t len);

static int store_record(RedisModuleCtx *ctx, const char *command, RedisModuleString *keyname,
                        const RecordArgs *a) {
    size_t lens[3] = {0, 0, 0};
    const char *strs[3] = {"", "", ""};
    RedisModuleString *fields[3] = {a->backend, a->device, a->tag};
    for (int i = 0; i < 3; i++)
        if (fields[i]) strs[i] = RedisModule_StringPtrLen(fields[i], &lens[i]);
    size_t head = 16 + 12 + lens[0] + lens[1] + lens[2] + 32;
    for (int i = 0; i < a->n_inputs; i++) {
        size_t l;
        RedisModule_StringPtrLen(a->inputs[i], &l);
        head += 4 + l;
    }
    for (int i = 0; i < a->n_outputs; i++) {
        size_t l;
        RedisModule_StringPtrLen(a->outputs[i], &l);
        head += 4 + l;
    }
    size_t total = head;
    for (int i = 0; i < a->n_payload; i++) {
        size_t l;
        RedisModule_StringPtrLen(a->payload[i], &l);
        total += l;
    }
    if (check_value_size(ctx, command, keyname, a->kind == KIND_MODEL ? "model" : "script", total))
        return REDISMODULE_OK;
    RedisModuleKey *key = open_for_store(ctx, keyname);
    if (!key) return REDISMODULE_OK;
    char *out = nk_alloc(head);
    if (!out) {
        RedisModule_CloseKey(key);
        return reply_errorf(ctx, "ERR out of memory storing %s; the key is unchanged", arg_text(keyname));
    }
    memcpy(out, RECORD_MAGIC, 4);
    out[4] = 1;
    out[5] = (char)a->kind;
    out[6] = out[7] = 0;
    put_u64(out + 8, ++next_store_id);
    size_t off = 16;
    for (int i = 0; i < 3; i++) off = put_str(out, off, strs[i], lens[i]);
    put_u64(out + off, (uint64_t)a->batchsize);
    put_u64(out + off + 8, (uint64_t)a->minbatchsize);
    put_u64(out + off + 16, (uint64_t)a->minbatchtimeout);
    put_u32(out + off + 24, (uint32_t)a->n_inputs);
    put_u32(out + off + 28, (uint32_t)a->n_outputs);
    off += 32;
    for (int i = 0; i < a->n_inputs; i++) {
        size_t l;
        const char *s = RedisModule_StringPtrLen(a->inputs[i], &l);
        off = put_str(out, off, s, l);
    }
    for (int i = 0; i < a->n_outputs; i++) {
        size_t l;
        const char *s = RedisModule_StringPtrLen(a->outputs[i], &l);
        off = put_str(out, off, s, l);
    }
    RedisModuleString *value = RedisModule_CreateString(ctx, out, head);
    nk_free(out);
    for (int i = 0; i < a->n_payload; i++) {
        size_t l;
        const char *s = RedisModule_StringPtrLen(a->payload[i], &l);
        value_append(ctx, value, s, l);
    }
    value_store(ctx, key, value);
    RedisModule_CloseKey(key);
    size_t klen;
    const char *kname = RedisModule_StringPtrLen(keyname, &klen);
    stats_drop(kname, klen); /* a new model or script: its statistics start at zero */
    RedisModule_ReplicateVerbatim(ctx);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

/* --- statistics for AI.INFO ---------------------------------------------------------------------
 * Per key and per stored version (store id): a new store, AI.MODELDEL / AI.SCRIPTDEL free them,
 * and counts of another version are never reported for this one. */
typedef struct Stats {
    char *key;
    size_t key_len;
    uint64_t store_id;
    long long duration_us, samples, calls, errors;
    struct Stats *next;
} Stats;

static Stats *stats_head;

static Stats *stats_find(const char *key, size_t len) {
    for (Stats *s = stats_head; s; s = s->next)
        if (s->key_len == len && memcmp(s->key, key, len) == 0) return s;
    return NULL;
}

/* The statistics of version `store_id` of `key`: NULL when there are none (and, without
 * `create`, when those kept are of another version). */
static Stats *stats_for(const char *key, size_t len, uint64_t store_id, int create) {
    Stats *s = stats_find(key, len);
    if (s && s->store_id == store_id) return s;
    if (!create) return NULL;
    if (s) {
        if (store_id < s->store_id) return NULL; /* a job of an older version: not counted */
        s->duration_us = s->samples = s->calls = s->errors = 0;
        s->store_id = store_id;
        return s;
    }
    s = nk_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->key = copy_bytes(key, len);
    if (!s->key) {
        nk_free(s);
        return NULL;
    }
    s->key_len = len;
    s->store_id = store_id;
    s->next = stats_head;
    stats_head = s;
    return s;
}

static void stats_drop(const char *key, size_t len) {
    for (Stats **p = &stats_head; *p; p = &(*p)->next) {
        if ((*p)->key_len == len && memcmp((*p)->key, key, len) == 0) {
            Stats *s = *p;
            *p = s->next;
            nk_free(s->key);
            nk_free(s);
            return;
        }
    }
}

static int stats_count_entries(void) {
    int n = 0;
    for (Stats *s = stats_head; s; s = s->next) n++;
    return n;
}

/* --- jobs -------------------------------------------------------------------------------------- */
typedef struct Job {
    uint64_t id;
    int kind;
    RedisModuleBlockedClient *bc;
    uint64_t caller;  /* client id of the caller */
    uint64_t owner;   /* client id of the worker that took it; 0 while queued */
    char *key;
    size_t key_len;
    char *function;   /* scripts */
    size_t function_len;
    uint64_t store_id;
    int n_in, n_out;
    char **in_data;   /* copies of the inputs, freed once a worker has taken them */
    size_t *in_len;
    size_t in_bytes;  /* what in_data holds, counted in job_bytes */
    RedisModuleString **out_keys;   /* held names of the output keys */
    RedisModuleString **out_values; /* held tensors from NKML.AI.DONE */
    char *error;      /* the caller's error reply, when it failed */
    uint64_t start_us;
    long long samples;
    struct Job *next;
} Job;

static Job *jobs_head;       /* queued and taken jobs, oldest first */
static uint64_t next_job_id;
static long long job_bytes;  /* input bytes all jobs hold now (at most MAX_JOB_BYTES) */

typedef struct Taker {
    RedisModuleBlockedClient *bc;
    uint64_t client;
    int woken;               /* unblocked to take a job; its reply callback has not run yet */
    int served;              /* its reply callback ran */
    struct Taker *next;
} Taker;

static Taker *takers_head;   /* workers blocked in NKML.AI.TAKE, oldest first */

typedef struct Worker {
    uint64_t client;
    struct Worker *next;
} Worker;

static Worker *workers_head; /* connections that have called NKML.AI.TAKE */

static void job_release_inputs(Job *job) {
    for (int i = 0; i < job->n_in; i++) {
        nk_free(job->in_data ? job->in_data[i] : NULL);
        if (job->in_data) job->in_data[i] = NULL;
    }
    job_bytes -= (long long)job->in_bytes;
    job->in_bytes = 0;
}

static void job_free(Job *job) {
    if (!job) return;
    job_release_inputs(job);
    for (int i = 0; i < job->n_out; i++) {
        if (job->out_keys && job->out_keys[i]) RedisModule_FreeString(NULL, job->out_keys[i]);
        if (job->out_values && job->out_values[i]) RedisModule_FreeString(NULL, job->out_values[i]);
    }
    nk_free(job->in_data);
    nk_free(job->in_len);
    nk_free(job->out_keys);
    nk_free(job->out_values);
    nk_free(job->key);
    nk_free(job->function);
    nk_free(job->error);
    nk_free(job);
}

static void job_unlink(Job *job) {
    for (Job **p = &jobs_head; *p; p = &(*p)->next) {
        if (*p == job) {
            *p = job->next;
            job->next = NULL;
            return;
        }
    }
}

static void job_append(Job *job) {
    Job **p = &jobs_head;
    while (*p) p = &(*p)->next;
    *p = job;
}

static void stats_count(const Job *job, int failed) {
    Stats *s = stats_for(job->key, job->key_len, job->store_id, 1);
    if (!s) return;
    s->calls++;
    if (failed) {
        s->errors++;
    } else {
        s->samples += job->samples;
        s->duration_us += (long long)(RedisModule_MonotonicMicroseconds() - job->start_us);
    }
}

/* Ends a job with an error reply to its caller (the job leaves the list). */
static void job_fail(Job *job, const char *fmt, ...) {
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    job_unlink(job);
    stats_count(job, 1);
    nk_free(job->error);
    job->error = copy_bytes(text, strlen(text));
    RedisModule_UnblockClient(job->bc, job);
}

static int worker_count(void) {
    int n = 0;
    for (Worker *w = workers_head; w; w = w->next) n++;
    return n;
}

static void worker_add(uint64_t client) {
    for (Worker *w = workers_head; w; w = w->next)
        if (w->client == client) return;
    Worker *w = nk_calloc(1, sizeof *w);
    if (!w) return;
    w->client = client;
    w->next = workers_head;
    workers_head = w;
}

static int job_queued(void) {
    for (Job *j = jobs_head; j; j = j->next)
        if (!j->owner) return 1;
    return 0;
}

/* Wakes the oldest waiting worker, whose reply callback takes the oldest queued job (and when
 * that worker is gone before its callback runs, take_free wakes the next one). */
static void wake_taker(void) {
    Taker *t = takers_head;
    if (!t) return;
    takers_head = t->next;
    t->next = NULL;
    t->woken = 1;
    RedisModule_UnblockClient(t->bc, t);
}

/* The caller's reply: the outputs written (all or, when one cannot be, none), or the error. */
static int execute_reply(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    Job *job = RedisModule_GetBlockedClientPrivateData(ctx);
    if (!job) return RedisModule_ReplyWithError(ctx, "ERR model execution ended without a result");
    if (job->error) return RedisModule_ReplyWithError(ctx, job->error);
    for (int i = 0; i < job->n_out; i++) {
        RedisModuleKey *key = RedisModule_OpenKey(ctx, job->out_keys[i], REDISMODULE_READ);
        int type = RedisModule_KeyType(key);
        RedisModule_CloseKey(key);
        if (type != REDISMODULE_KEYTYPE_EMPTY && type != REDISMODULE_KEYTYPE_STRING)
            return reply_errorf(ctx, "WRONGTYPE output key %s came to hold another Redis type while "
                                     "the %s ran; no output was written",
                                arg_text(job->out_keys[i]), job->kind == KIND_MODEL ? "model" : "script");
    }
    for (int i = 0; i < job->n_out; i++) {
        RedisModuleKey *key = RedisModule_OpenKey(ctx, job->out_keys[i], REDISMODULE_READ | REDISMODULE_WRITE);
        int stored = RedisModule_StringSet(key, job->out_values[i]) == REDISMODULE_OK;
        RedisModule_CloseKey(key);
        if (!stored)
            return reply_errorf(ctx, "ERR could not write output key %s", arg_text(job->out_keys[i]));
        /* replicas and the AOF get the write as what it is: a SET of the output tensor */
        RedisModule_Replicate(ctx, "SET", "ss", job->out_keys[i], job->out_values[i]);
    }
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

static Job *job_by_bc(RedisModuleBlockedClient *bc) {
    for (Job *j = jobs_head; j; j = j->next)
        if (j->bc == bc) return j;
    return NULL;
}

static int execute_timeout(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    RedisModuleBlockedClient *bc = RedisModule_GetBlockedClientHandle(ctx);
    Job *job = job_by_bc(bc);
    if (!job) return RedisModule_ReplyWithError(ctx, "ERR model execution timed out");
    const char *state = job->owner ? "a worker took it but did not answer"
                                   : "no worker took it";
    reply_errorf(ctx, "ERR %s execution of %.*s timed out (%s)",
                 job->kind == KIND_MODEL ? "model" : "script", (int)job->key_len, job->key, state);
    job_unlink(job);
    stats_count(job, 1);
    RedisModule_UnblockClient(bc, job); /* frees the handle and, through free_privdata, the job */
    return REDISMODULE_OK;
}

/* The caller disconnected or was unblocked (CLIENT UNBLOCK ... ERROR) while its job waited:
 * the job goes, whether queued or taken (the worker's answer is then refused). */
static void execute_disconnected(RedisModuleCtx *ctx, RedisModuleBlockedClient *bc) {
    (void)ctx;
    Job *job = job_by_bc(bc);
    if (!job) return; /* already ended: its reply is on its way */
    job_unlink(job);
    RedisModule_UnblockClient(bc, job);
}

static void execute_free(RedisModuleCtx *ctx, void *privdata) {
    (void)ctx;
    job_free(privdata);
}

/* Reads the input tensors and queues the job. `inputs` and `outputs` are key names. */
static int queue_job(RedisModuleCtx *ctx, int kind, RedisModuleString *keyname, uint64_t store_id,
                     RedisModuleString *function, RedisModuleString **inputs, int n_in,
                     RedisModuleString **outputs, int n_out, long long timeout_ms) {
    const char *what = kind == KIND_MODEL ? "model" : "script";
    if (RedisModule_GetContextFlags(ctx) & (REDISMODULE_CTX_FLAGS_MULTI | REDISMODULE_CTX_FLAGS_LUA))
        return RedisModule_ReplyWithError(
            ctx, "ERR model and script execution cannot run inside MULTI or a script");
    if (worker_count() == 0)
        return RedisModule_ReplyWithError(
            ctx, "ERR no nekrs_ml model worker serves this server; start one with "
                 "`nekrs-ml serve --dir RUN_DIR --smartredis`");
    for (int i = 0; i < n_out; i++) {
        RedisModuleKey *key = RedisModule_OpenKey(ctx, outputs[i], REDISMODULE_READ);
        int type = RedisModule_KeyType(key);
        RedisModule_CloseKey(key);
        if (type != REDISMODULE_KEYTYPE_EMPTY && type != REDISMODULE_KEYTYPE_STRING)
            return reply_errorf(ctx, "WRONGTYPE output key %s holds another Redis type (delete it or "
                                     "name another output)", arg_text(outputs[i]));
    }
    /* the inputs, checked and measured before anything is copied */
    size_t in_bytes = 0;
    long long samples = 1;
    for (int i = 0; i < n_in; i++) {
        RedisModuleKey *key = RedisModule_OpenKey(ctx, inputs[i], REDISMODULE_READ);
        size_t vlen = 0;
        const char *v = RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_STRING
                            ? RedisModule_StringDMA(key, &vlen, REDISMODULE_READ)
                            : NULL;
        TensorView t;
        const char *why = RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_EMPTY
                              ? "tensor key is empty or in a different shard"
                              : (v ? tensor_parse(v, vlen, &t) : "key holds another Redis type");
        RedisModule_CloseKey(key);
        if (why) return reply_errorf(ctx, "ERR input %s: %s", arg_text(inputs[i]), why);
        if (i == 0) samples = t.rank > 0 ? (long long)t.shape[0] : 1;
        in_bytes += vlen;
    }
    if ((unsigned long long)job_bytes + in_bytes > (unsigned long long)max_job_bytes)
        return reply_errorf(ctx, "ERR %s %s: its inputs take %zu bytes and the jobs waiting on this "
                                 "server hold %lld bytes, over nkml_ai's limit of %lld bytes "
                                 "(MAX_JOB_BYTES load argument); retry when the model workers have "
                                 "caught up, or raise MAX_JOB_BYTES",
                            what, arg_text(keyname), in_bytes, job_bytes, max_job_bytes);
    Job *job = nk_calloc(1, sizeof *job);
    if (!job) return RedisModule_ReplyWithError(ctx, "ERR out of memory");
    job->kind = kind;
    job->n_in = n_in;
    job->n_out = n_out;
    job->samples = samples;
    job->in_data = nk_calloc((size_t)n_in + 1, sizeof(char *));
    job->in_len = nk_calloc((size_t)n_in + 1, sizeof(size_t));
    job->out_keys = nk_calloc((size_t)n_out + 1, sizeof(RedisModuleString *));
    job->out_values = nk_calloc((size_t)n_out + 1, sizeof(RedisModuleString *));
    size_t len;
    const char *s = RedisModule_StringPtrLen(keyname, &len);
    job->key = copy_bytes(s, len);
    job->key_len = len;
    if (function) {
        s = RedisModule_StringPtrLen(function, &len);
        job->function = copy_bytes(s, len);
        job->function_len = len;
    }
    if (!job->in_data || !job->in_len || !job->out_keys || !job->out_values || !job->key ||
        (function && !job->function)) {
        job_free(job);
        return RedisModule_ReplyWithError(ctx, "ERR out of memory");
    }
    for (int i = 0; i < n_in; i++) {
        RedisModuleKey *key = RedisModule_OpenKey(ctx, inputs[i], REDISMODULE_READ);
        size_t vlen = 0;
        const char *v = RedisModule_StringDMA(key, &vlen, REDISMODULE_READ);
        job->in_data[i] = v ? nk_alloc(vlen) : NULL;
        if (job->in_data[i]) {
            memcpy(job->in_data[i], v, vlen);
            job->in_len[i] = vlen;
            job->in_bytes += vlen;
            job_bytes += (long long)vlen;
        }
        RedisModule_CloseKey(key);
        if (!job->in_data[i]) {
            job_free(job);
            return reply_errorf(ctx, "ERR out of memory copying input %s", arg_text(inputs[i]));
        }
    }
    for (int i = 0; i < n_out; i++) job->out_keys[i] = RedisModule_HoldString(NULL, outputs[i]);
    if (timeout_ms <= 0 || timeout_ms > execute_timeout_ms) timeout_ms = execute_timeout_ms;
    job->id = ++next_job_id;
    job->store_id = store_id;
    job->caller = RedisModule_GetClientId(ctx);
    job->start_us = RedisModule_MonotonicMicroseconds();
    job->bc = RedisModule_BlockClient(ctx, execute_reply, execute_timeout, execute_free, timeout_ms);
    RedisModule_SetDisconnectCallback(job->bc, execute_disconnected);
    job_append(job);
    wake_taker();
    return REDISMODULE_OK;
}

/* Parses `INPUTS n a b ... OUTPUTS m c d ... [TIMEOUT t]` (counted) or, with counted = 0,
 * `INPUTS a b ... OUTPUTS c d ...`. Positions are argv indices; returns 0 or replies the error. */
typedef struct {
    int in_first, n_in, out_first, n_out;
    long long timeout_ms;
    int keys_first, n_keys, n_args;
} IOArgs;

/* A parse error: replied to a caller, but not to the server asking for key positions (then the
 * command itself runs and replies it). Returns -1. */
static int io_error(RedisModuleCtx *ctx, const char *fmt, ...) {
    if (RedisModule_IsKeysPositionRequest(ctx)) return -1;
    va_list ap;
    va_start(ap, fmt);
    reply_verrorf(ctx, fmt, ap);
    va_end(ap);
    return -1;
}

static int parse_io(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, int pos, int counted,
                    int allow_keys_args, IOArgs *io) {
    memset(io, 0, sizeof *io);
    while (pos < argc) {
        int is_in = arg_is(argv[pos], "INPUTS"), is_out = arg_is(argv[pos], "OUTPUTS");
        int is_keys = allow_keys_args && arg_is(argv[pos], "KEYS");
        int is_args = allow_keys_args && arg_is(argv[pos], "ARGS");
        if (arg_is(argv[pos], "TIMEOUT")) {
            if (pos + 1 >= argc || RedisModule_StringToLongLong(argv[pos + 1], &io->timeout_ms) != REDISMODULE_OK ||
                io->timeout_ms <= 0)
                return io_error(ctx, "ERR TIMEOUT takes a positive number of milliseconds");
            pos += 2;
        } else if (is_in || is_out || is_keys || is_args) {
            const char *word = arg_text(argv[pos]);
            long long n = 0;
            int first;
            if (counted) {
                if (pos + 1 >= argc || RedisModule_StringToLongLong(argv[pos + 1], &n) != REDISMODULE_OK ||
                    n < 0 || pos + 2 + n > argc)
                    return io_error(ctx, "ERR %s needs a count and that many names", word);
                first = pos + 2;
                pos = first + (int)n;
            } else {
                first = pos + 1;
                int end = first;
                while (end < argc && !arg_is(argv[end], "INPUTS") && !arg_is(argv[end], "OUTPUTS") &&
                       !arg_is(argv[end], "TIMEOUT"))
                    end++;
                n = end - first;
                pos = end;
            }
            if (is_in) {
                io->in_first = first;
                io->n_in = (int)n;
            } else if (is_out) {
                io->out_first = first;
                io->n_out = (int)n;
            } else if (is_keys) {
                io->keys_first = first;
                io->n_keys = (int)n;
            } else {
                io->n_args = (int)n;
            }
        } else {
            return io_error(ctx, "ERR unexpected argument %s", arg_text(argv[pos]));
        }
    }
    return 0;
}

/* Key positions for a cluster-routed execute command (getkeys-api). */
static void report_io_keys(RedisModuleCtx *ctx, const IOArgs *io) {
    RedisModule_KeyAtPos(ctx, 1);
    for (int i = 0; i < io->n_keys; i++) RedisModule_KeyAtPos(ctx, io->keys_first + i);
    for (int i = 0; i < io->n_in; i++) RedisModule_KeyAtPos(ctx, io->in_first + i);
    for (int i = 0; i < io->n_out; i++) RedisModule_KeyAtPos(ctx, io->out_first + i);
}

/* --- AI.TENSORSET key type dim... [BLOB data | VALUES v...] -------------------------------------- */
static int cmd_tensorset(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 3) return RedisModule_WrongArity(ctx);
    size_t tlen;
    const char *tname = RedisModule_StringPtrLen(argv[2], &tlen);
    const DType *dtype = dtype_by_name(tname, tlen);
    if (!dtype)
        return reply_errorf(ctx, "ERR invalid data type %s (FLOAT, DOUBLE, INT8, INT16, INT32, "
                                 "INT64, UINT8 or UINT16)", tname);
    uint64_t shape[TENSOR_MAX_RANK];
    int rank = 0, pos = 3;
    uint64_t count = 1;
    while (pos < argc && !arg_is(argv[pos], "BLOB") && !arg_is(argv[pos], "VALUES")) {
        long long d;
        if (RedisModule_StringToLongLong(argv[pos], &d) != REDISMODULE_OK || d <= 0)
            return reply_errorf(ctx, "ERR invalid or negative value found in tensor shape: %s",
                                arg_text(argv[pos]));
        if (rank == TENSOR_MAX_RANK)
            return RedisModule_ReplyWithError(ctx, "ERR nekrs_ml tensors have at most 8 dimensions");
        if (count > (UINT64_MAX / 16) / (uint64_t)d)
            return RedisModule_ReplyWithError(ctx, "ERR tensor shape is too large");
        shape[rank++] = (uint64_t)d;
        count *= (uint64_t)d;
        pos++;
    }
    size_t nbytes = count * dtype->itemsize;
    size_t header = TENSOR_HEADER + 8 * (size_t)rank;
    if (check_value_size(ctx, "AI.TENSORSET", argv[1], "tensor", header + nbytes)) return REDISMODULE_OK;
    const char *blob = NULL;
    int values_first = -1;
    if (pos < argc && arg_is(argv[pos], "BLOB")) {
        if (pos + 2 != argc) return RedisModule_ReplyWithError(ctx, "ERR BLOB takes exactly one value");
        size_t blen;
        blob = RedisModule_StringPtrLen(argv[pos + 1], &blen);
        if (blen != nbytes)
            return reply_errorf(ctx, "ERR data length does not match tensor shape and type "
                                     "(%zu bytes, expected %zu)", blen, nbytes);
    } else if (pos < argc) { /* VALUES */
        values_first = pos + 1;
        if ((uint64_t)(argc - values_first) != count)
            return reply_errorf(ctx, "ERR wrong number of values provided, expected %llu",
                                (unsigned long long)count);
        for (int i = values_first; i < argc; i++) {
            double dv;
            long long lv;
            int ok = dtype->is_float ? RedisModule_StringToDouble(argv[i], &dv) == REDISMODULE_OK
                                     : RedisModule_StringToLongLong(argv[i], &lv) == REDISMODULE_OK;
            if (!ok) return reply_errorf(ctx, "ERR invalid value %s for %s", arg_text(argv[i]), dtype->name);
        }
    }
    RedisModuleKey *key = open_for_store(ctx, argv[1]);
    if (!key) return REDISMODULE_OK;
    char *data = NULL; /* VALUES, or zeros when neither BLOB nor VALUES is given */
    if (!blob && nbytes > 0) {
        data = nk_calloc(1, nbytes);
        if (!data) {
            RedisModule_CloseKey(key);
            return reply_errorf(ctx, "ERR out of memory for a tensor of %zu bytes; the key is unchanged", nbytes);
        }
        for (uint64_t i = 0; values_first >= 0 && i < count; i++) {
            RedisModuleString *arg = argv[values_first + (int)i];
            double dv = 0;
            long long lv = 0;
            if (dtype->is_float) RedisModule_StringToDouble(arg, &dv);
            else RedisModule_StringToLongLong(arg, &lv);
            char *p = data + i * dtype->itemsize;
            switch (dtype->code) {
            case 1: { float f = (float)dv; memcpy(p, &f, 4); break; }
            case 2: memcpy(p, &dv, 8); break;
            case 3: { int8_t x = (int8_t)lv; memcpy(p, &x, 1); break; }
            case 4: { int16_t x = (int16_t)lv; memcpy(p, &x, 2); break; }
            case 5: { int32_t x = (int32_t)lv; memcpy(p, &x, 4); break; }
            case 6: memcpy(p, &lv, 8); break;
            case 7: { uint8_t x = (uint8_t)lv; memcpy(p, &x, 1); break; }
            case 8: { uint16_t x = (uint16_t)lv; memcpy(p, &x, 2); break; }
            }
        }
    }
    char head[TENSOR_HEADER + 8 * TENSOR_MAX_RANK];
    memcpy(head, "NKML", 4);
    head[4] = 1;
    head[5] = (char)dtype->code;
    head[6] = (char)rank;
    head[7] = 0;
    for (int i = 0; i < rank; i++) put_u64(head + TENSOR_HEADER + 8 * i, shape[i]);
    RedisModuleString *value = RedisModule_CreateString(ctx, head, header);
    value_append(ctx, value, blob ? blob : data, nbytes);
    nk_free(data);
    value_store(ctx, key, value);
    RedisModule_CloseKey(key);
    RedisModule_ReplicateVerbatim(ctx);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

static void reply_values(RedisModuleCtx *ctx, const TensorView *t) {
    size_t count = t->nbytes / t->dtype->itemsize;
    RedisModule_ReplyWithArray(ctx, (long)count);
    for (size_t i = 0; i < count; i++) {
        const char *p = t->data + i * t->dtype->itemsize;
        switch (t->dtype->code) {
        case 1: { float f; memcpy(&f, p, 4); RedisModule_ReplyWithDouble(ctx, f); break; }
        case 2: { double d; memcpy(&d, p, 8); RedisModule_ReplyWithDouble(ctx, d); break; }
        case 3: { int8_t x; memcpy(&x, p, 1); RedisModule_ReplyWithLongLong(ctx, x); break; }
        case 4: { int16_t x; memcpy(&x, p, 2); RedisModule_ReplyWithLongLong(ctx, x); break; }
        case 5: { int32_t x; memcpy(&x, p, 4); RedisModule_ReplyWithLongLong(ctx, x); break; }
        case 6: { int64_t x; memcpy(&x, p, 8); RedisModule_ReplyWithLongLong(ctx, x); break; }
        case 7: { uint8_t x; memcpy(&x, p, 1); RedisModule_ReplyWithLongLong(ctx, x); break; }
        case 8: { uint16_t x; memcpy(&x, p, 2); RedisModule_ReplyWithLongLong(ctx, x); break; }
        }
    }
}

/* --- AI.TENSORGET key [META] [BLOB | VALUES] ------------------------------------------------------ */
static int cmd_tensorget(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 2) return RedisModule_WrongArity(ctx);
    int meta = 0, blob = 0, values = 0;
    for (int i = 2; i < argc; i++) {
        if (arg_is(argv[i], "META")) meta = 1;
        else if (arg_is(argv[i], "BLOB")) blob = 1;
        else if (arg_is(argv[i], "VALUES")) values = 1;
        else return reply_errorf(ctx, "ERR unexpected argument %s (META, BLOB or VALUES)", arg_text(argv[i]));
    }
    if (blob && values) return RedisModule_ReplyWithError(ctx, "ERR both BLOB and VALUES specified");
    if (!meta && !blob && !values) meta = values = 1;
    RedisModuleKey *key = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ);
    if (RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_EMPTY) {
        RedisModule_CloseKey(key);
        return RedisModule_ReplyWithError(ctx, "ERR tensor key is empty or in a different shard");
    }
    size_t len = 0;
    const char *v = RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_STRING
                        ? RedisModule_StringDMA(key, &len, REDISMODULE_READ)
                        : NULL;
    TensorView t;
    const char *why = v ? tensor_parse(v, len, &t) : "key holds another Redis type";
    if (why) {
        RedisModule_CloseKey(key);
        return reply_errorf(ctx, "WRONGTYPE %s: %s", arg_text(argv[1]), why);
    }
    if (meta) {
        RedisModule_ReplyWithArray(ctx, blob || values ? 6 : 4);
        reply_text(ctx, "dtype");
        reply_text(ctx, t.dtype->name);
        reply_text(ctx, "shape");
        RedisModule_ReplyWithArray(ctx, t.rank);
        for (int i = 0; i < t.rank; i++) RedisModule_ReplyWithLongLong(ctx, (long long)t.shape[i]);
        if (blob || values) reply_text(ctx, blob ? "blob" : "values");
    }
    if (blob) RedisModule_ReplyWithStringBuffer(ctx, t.data, t.nbytes);
    else if (values) reply_values(ctx, &t);
    RedisModule_CloseKey(key);
    return REDISMODULE_OK;
}

/* The backends the model workers evaluate (nekrs_ml/serve/backends.py). */
static int backend_known(RedisModuleString *name) {
    return arg_is(name, "TORCH") || arg_is(name, "TF") || arg_is(name, "TFLITE") || arg_is(name, "ONNX");
}

/* --- AI.MODELSTORE key backend device [TAG t] [BATCHSIZE n [MINBATCHSIZE m [MINBATCHTIMEOUT t]]]
 *     [INPUTS n ...] [OUTPUTS n ...] BLOB chunk... -------------------------------------------- */
static int cmd_modelstore(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 6) return RedisModule_WrongArity(ctx);
    if (!backend_known(argv[2]))
        return reply_errorf(ctx, "ERR unsupported backend %s: nekrs_ml model workers run TORCH, TF, "
                                 "TFLITE and ONNX models", arg_text(argv[2]));
    RecordArgs a;
    memset(&a, 0, sizeof a);
    a.kind = KIND_MODEL;
    a.backend = argv[2];
    a.device = argv[3];
    int pos = 4;
    while (pos < argc && !arg_is(argv[pos], "BLOB")) {
        long long n;
        if (arg_is(argv[pos], "TAG") && pos + 1 < argc) {
            a.tag = argv[pos + 1];
            pos += 2;
        } else if ((arg_is(argv[pos], "BATCHSIZE") || arg_is(argv[pos], "MINBATCHSIZE") ||
                    arg_is(argv[pos], "MINBATCHTIMEOUT")) && pos + 1 < argc) {
            if (RedisModule_StringToLongLong(argv[pos + 1], &n) != REDISMODULE_OK || n < 0)
                return reply_errorf(ctx, "ERR %s takes a non-negative integer", arg_text(argv[pos]));
            if (arg_is(argv[pos], "BATCHSIZE")) a.batchsize = n;
            else if (arg_is(argv[pos], "MINBATCHSIZE")) a.minbatchsize = n;
            else a.minbatchtimeout = n;
            pos += 2;
        } else if ((arg_is(argv[pos], "INPUTS") || arg_is(argv[pos], "OUTPUTS")) && pos + 1 < argc) {
            if (RedisModule_StringToLongLong(argv[pos + 1], &n) != REDISMODULE_OK || n < 0 ||
                pos + 2 + n > argc)
                return reply_errorf(ctx, "ERR %s needs a count and that many names", arg_text(argv[pos]));
            if (arg_is(argv[pos], "INPUTS")) {
                a.inputs = argv + pos + 2;
                a.n_inputs = (int)n;
            } else {
                a.outputs = argv + pos + 2;
                a.n_outputs = (int)n;
            }
            pos += 2 + (int)n;
        } else {
            return reply_errorf(ctx, "ERR unexpected argument %s", arg_text(argv[pos]));
        }
    }
    if (pos + 1 >= argc) return RedisModule_ReplyWithError(ctx, "ERR insufficient arguments, missing model BLOB");
    /* a TF graph is run by the names of its input and output operations (RedisAI 1.2) */
    if (arg_is(argv[2], "TF") && (a.n_inputs == 0 || a.n_outputs == 0))
        return RedisModule_ReplyWithError(ctx, "ERR Insufficient arguments, INPUTS and OUTPUTS not specified for TF");
    a.payload = argv + pos + 1;
    a.n_payload = argc - pos - 1;
    return store_record(ctx, "AI.MODELSTORE", argv[1], &a);
}

static void reply_names(RedisModuleCtx *ctx, const Record *r, uint32_t first, uint32_t n) {
    RedisModule_ReplyWithArray(ctx, n);
    for (uint32_t i = 0; i < n; i++) {
        const char *s = "";
        size_t len = 0;
        record_name(r, first + i, &s, &len);
        RedisModule_ReplyWithStringBuffer(ctx, s, len);
    }
}

static void reply_payload(RedisModuleCtx *ctx, const Record *r) {
    if (r->kind == KIND_SCRIPT || (long long)r->payload_len <= model_chunk_size || model_chunk_size <= 0) {
        RedisModule_ReplyWithStringBuffer(ctx, r->payload, r->payload_len);
        return;
    }
    size_t chunk = (size_t)model_chunk_size;
    long n = (long)((r->payload_len + chunk - 1) / chunk);
    RedisModule_ReplyWithArray(ctx, n);
    for (long i = 0; i < n; i++) {
        size_t off = (size_t)i * chunk;
        size_t len = r->payload_len - off < chunk ? r->payload_len - off : chunk;
        RedisModule_ReplyWithStringBuffer(ctx, r->payload + off, len);
    }
}

/* --- AI.MODELGET key [META] [BLOB] --------------------------------------------------------------- */
static int cmd_modelget(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 2) return RedisModule_WrongArity(ctx);
    int meta = 0, blob = 0;
    for (int i = 2; i < argc; i++) {
        if (arg_is(argv[i], "META")) meta = 1;
        else if (arg_is(argv[i], "BLOB")) blob = 1;
        else return reply_errorf(ctx, "ERR unexpected argument %s (META or BLOB)", arg_text(argv[i]));
    }
    if (!meta && !blob) meta = 1;
    Record r;
    RedisModuleKey *key = open_record(ctx, argv[1], KIND_MODEL, REDISMODULE_READ, &r);
    if (!key) return REDISMODULE_OK;
    if (meta) {
        RedisModule_ReplyWithArray(ctx, blob ? 18 : 16);
        reply_text(ctx, "backend");
        RedisModule_ReplyWithStringBuffer(ctx, r.backend, r.backend_len);
        reply_text(ctx, "device");
        RedisModule_ReplyWithStringBuffer(ctx, r.device, r.device_len);
        reply_text(ctx, "tag");
        RedisModule_ReplyWithStringBuffer(ctx, r.tag, r.tag_len);
        reply_text(ctx, "batchsize");
        RedisModule_ReplyWithLongLong(ctx, (long long)r.batchsize);
        reply_text(ctx, "minbatchsize");
        RedisModule_ReplyWithLongLong(ctx, (long long)r.minbatchsize);
        reply_text(ctx, "inputs");
        reply_names(ctx, &r, 0, r.n_inputs);
        reply_text(ctx, "outputs");
        reply_names(ctx, &r, r.n_inputs, r.n_outputs);
        reply_text(ctx, "minbatchtimeout");
        RedisModule_ReplyWithLongLong(ctx, (long long)r.minbatchtimeout);
        if (blob) reply_text(ctx, "blob");
    }
    if (blob) reply_payload(ctx, &r);
    RedisModule_CloseKey(key);
    return REDISMODULE_OK;
}

static int delete_record(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, int kind) {
    if (argc != 2) return RedisModule_WrongArity(ctx);
    Record r;
    RedisModuleKey *key = open_record(ctx, argv[1], kind, REDISMODULE_READ | REDISMODULE_WRITE, &r);
    if (!key) return REDISMODULE_OK;
    RedisModule_DeleteKey(key);
    RedisModule_CloseKey(key);
    size_t klen;
    const char *kname = RedisModule_StringPtrLen(argv[1], &klen);
    stats_drop(kname, klen);
    RedisModule_ReplicateVerbatim(ctx);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

static int cmd_modeldel(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return delete_record(ctx, argv, argc, KIND_MODEL);
}

static int cmd_scriptdel(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return delete_record(ctx, argv, argc, KIND_SCRIPT);
}

/* --- AI.MODELEXECUTE key INPUTS n ... OUTPUTS m ... [TIMEOUT t]; AI.MODELRUN (legacy, no counts) */
static int model_execute(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, int counted) {
    if (argc < 4) return RedisModule_WrongArity(ctx);
    IOArgs io;
    if (parse_io(ctx, argv, argc, 2, counted, 0, &io) != 0) {
        return RedisModule_IsKeysPositionRequest(ctx) ? (RedisModule_KeyAtPos(ctx, 1), REDISMODULE_OK)
                                                      : REDISMODULE_OK;
    }
    if (RedisModule_IsKeysPositionRequest(ctx)) {
        report_io_keys(ctx, &io);
        return REDISMODULE_OK;
    }
    if (io.n_in == 0 || io.n_out == 0)
        return RedisModule_ReplyWithError(ctx, "ERR INPUTS and OUTPUTS must each name at least one tensor");
    Record r;
    RedisModuleKey *key = open_record(ctx, argv[1], KIND_MODEL, REDISMODULE_READ, &r);
    if (!key) return REDISMODULE_OK;
    uint64_t store_id = r.store_id;
    RedisModule_CloseKey(key);
    return queue_job(ctx, KIND_MODEL, argv[1], store_id, NULL, argv + io.in_first, io.n_in,
                     argv + io.out_first, io.n_out, io.timeout_ms);
}

static int cmd_modelexecute(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return model_execute(ctx, argv, argc, 1);
}

static int cmd_modelrun(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return model_execute(ctx, argv, argc, 0);
}

/* --- AI.SCRIPTSET key device [TAG t] SOURCE src; AI.SCRIPTSTORE key device [TAG t]
 *     ENTRY_POINTS n fn... SOURCE src ------------------------------------------------------------ */
static int script_store(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, int with_entry_points) {
    if (argc < 5) return RedisModule_WrongArity(ctx);
    RecordArgs a;
    memset(&a, 0, sizeof a);
    a.kind = KIND_SCRIPT;
    a.device = argv[2];
    int pos = 3;
    while (pos < argc && !arg_is(argv[pos], "SOURCE")) {
        long long n;
        if (arg_is(argv[pos], "TAG") && pos + 1 < argc) {
            a.tag = argv[pos + 1];
            pos += 2;
        } else if (with_entry_points && arg_is(argv[pos], "ENTRY_POINTS") && pos + 1 < argc) {
            if (RedisModule_StringToLongLong(argv[pos + 1], &n) != REDISMODULE_OK || n <= 0 ||
                pos + 2 + n > argc)
                return RedisModule_ReplyWithError(ctx, "ERR ENTRY_POINTS needs a count and that many names");
            a.inputs = argv + pos + 2;
            a.n_inputs = (int)n;
            pos += 2 + (int)n;
        } else {
            return reply_errorf(ctx, "ERR unexpected argument %s", arg_text(argv[pos]));
        }
    }
    if (pos + 2 != argc) return RedisModule_ReplyWithError(ctx, "ERR SOURCE takes exactly one script text");
    if (with_entry_points && a.n_inputs == 0)
        return RedisModule_ReplyWithError(ctx, "ERR AI.SCRIPTSTORE needs ENTRY_POINTS");
    a.payload = argv + pos + 1;
    a.n_payload = 1;
    return store_record(ctx, with_entry_points ? "AI.SCRIPTSTORE" : "AI.SCRIPTSET", argv[1], &a);
}

static int cmd_scriptset(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return script_store(ctx, argv, argc, 0);
}

static int cmd_scriptstore(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return script_store(ctx, argv, argc, 1);
}

/* --- AI.SCRIPTGET key [META] [SOURCE] -------------------------------------------------------------- */
static int cmd_scriptget(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 2) return RedisModule_WrongArity(ctx);
    int meta = 0, source = 0;
    for (int i = 2; i < argc; i++) {
        if (arg_is(argv[i], "META")) meta = 1;
        else if (arg_is(argv[i], "SOURCE")) source = 1;
        else return reply_errorf(ctx, "ERR unexpected argument %s (META or SOURCE)", arg_text(argv[i]));
    }
    if (!meta && !source) meta = source = 1;
    Record r;
    RedisModuleKey *key = open_record(ctx, argv[1], KIND_SCRIPT, REDISMODULE_READ, &r);
    if (!key) return REDISMODULE_OK;
    if (meta) {
        RedisModule_ReplyWithArray(ctx, source ? 8 : 6);
        reply_text(ctx, "device");
        RedisModule_ReplyWithStringBuffer(ctx, r.device, r.device_len);
        reply_text(ctx, "tag");
        RedisModule_ReplyWithStringBuffer(ctx, r.tag, r.tag_len);
        reply_text(ctx, "entry_points");
        reply_names(ctx, &r, 0, r.n_inputs);
        if (source) reply_text(ctx, "source");
    }
    if (source) reply_payload(ctx, &r);
    RedisModule_CloseKey(key);
    return REDISMODULE_OK;
}

/* --- AI.SCRIPTRUN key fn INPUTS ... OUTPUTS ... (legacy); AI.SCRIPTEXECUTE key fn [KEYS n ...]
 *     [INPUTS n ...] [ARGS n ...] [OUTPUTS n ...] [TIMEOUT t] ----------------------------------- */
static int script_execute(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, int counted) {
    if (argc < 3) return RedisModule_WrongArity(ctx);
    IOArgs io;
    if (parse_io(ctx, argv, argc, 3, counted, counted, &io) != 0) {
        return RedisModule_IsKeysPositionRequest(ctx) ? (RedisModule_KeyAtPos(ctx, 1), REDISMODULE_OK)
                                                      : REDISMODULE_OK;
    }
    if (RedisModule_IsKeysPositionRequest(ctx)) {
        report_io_keys(ctx, &io);
        return REDISMODULE_OK;
    }
    if (io.n_args > 0)
        return RedisModule_ReplyWithError(ctx, "ERR ARGS is not supported by nekrs_ml's RedisAI "
                                               "compatibility: pass the values as tensors");
    Record r;
    RedisModuleKey *key = open_record(ctx, argv[1], KIND_SCRIPT, REDISMODULE_READ, &r);
    if (!key) return REDISMODULE_OK;
    uint64_t store_id = r.store_id;
    RedisModule_CloseKey(key);
    if (io.n_in == 0)
        return RedisModule_ReplyWithError(ctx, "ERR INPUTS must name at least one tensor");
    return queue_job(ctx, KIND_SCRIPT, argv[1], store_id, argv[2], argv + io.in_first, io.n_in,
                     argv + io.out_first, io.n_out, io.timeout_ms);
}

static int cmd_scriptrun(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return script_execute(ctx, argv, argc, 0);
}

static int cmd_scriptexecute(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return script_execute(ctx, argv, argc, 1);
}

/* --- AI.INFO key [RESETSTAT] ------------------------------------------------------------------------ */
static int cmd_info(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 2 || argc > 3) return RedisModule_WrongArity(ctx);
    if (argc == 3 && !arg_is(argv[2], "RESETSTAT"))
        return reply_errorf(ctx, "ERR unexpected argument %s (RESETSTAT)", arg_text(argv[2]));
    RedisModuleKey *key = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ);
    size_t len = 0;
    const char *v = RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_STRING
                        ? RedisModule_StringDMA(key, &len, REDISMODULE_READ)
                        : NULL;
    Record r;
    if (!v || record_parse(v, len, &r) != 0) {
        RedisModule_CloseKey(key);
        return RedisModule_ReplyWithError(ctx, "ERR cannot find run info for key");
    }
    size_t klen;
    const char *kname = RedisModule_StringPtrLen(argv[1], &klen);
    Stats *s = stats_for(kname, klen, r.store_id, 0);
    if (argc == 3) {
        if (s) s->duration_us = s->samples = s->calls = s->errors = 0;
        RedisModule_CloseKey(key);
        return RedisModule_ReplyWithSimpleString(ctx, "OK");
    }
    RedisModule_ReplyWithArray(ctx, 18);
    reply_text(ctx, "key");
    RedisModule_ReplyWithStringBuffer(ctx, kname, klen);
    reply_text(ctx, "type");
    reply_text(ctx, r.kind == KIND_MODEL ? "MODEL" : "SCRIPT");
    reply_text(ctx, "backend");
    if (r.kind == KIND_MODEL) RedisModule_ReplyWithStringBuffer(ctx, r.backend, r.backend_len);
    else reply_text(ctx, "TORCH");
    reply_text(ctx, "device");
    RedisModule_ReplyWithStringBuffer(ctx, r.device, r.device_len);
    reply_text(ctx, "tag");
    RedisModule_ReplyWithStringBuffer(ctx, r.tag, r.tag_len);
    reply_text(ctx, "duration");
    RedisModule_ReplyWithLongLong(ctx, s ? s->duration_us : 0);
    reply_text(ctx, "samples");
    RedisModule_ReplyWithLongLong(ctx, r.kind == KIND_MODEL ? (s ? s->samples : 0) : -1);
    reply_text(ctx, "calls");
    RedisModule_ReplyWithLongLong(ctx, s ? s->calls : 0);
    reply_text(ctx, "errors");
    RedisModule_ReplyWithLongLong(ctx, s ? s->errors : 0);
    RedisModule_CloseKey(key);
    return REDISMODULE_OK;
}

/* --- AI.CONFIG ------------------------------------------------------------------------------------- */
static int cmd_config(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 2) return RedisModule_WrongArity(ctx);
    if (arg_is(argv[1], "GET") && argc == 3) {
        if (arg_is(argv[2], "MODEL_CHUNK_SIZE")) return RedisModule_ReplyWithLongLong(ctx, model_chunk_size);
        return RedisModule_ReplyWithNull(ctx); /* BACKENDSPATH and the rest: not set */
    }
    if (arg_is(argv[1], "MODEL_CHUNK_SIZE") && argc == 3) {
        long long n;
        if (RedisModule_StringToLongLong(argv[2], &n) != REDISMODULE_OK || n <= 0)
            return RedisModule_ReplyWithError(ctx, "ERR MODEL_CHUNK_SIZE: chunk size must be a positive integer");
        model_chunk_size = n;
        return RedisModule_ReplyWithSimpleString(ctx, "OK");
    }
    if (arg_is(argv[1], "BACKENDSPATH") && argc == 3) return RedisModule_ReplyWithSimpleString(ctx, "OK");
    if (arg_is(argv[1], "LOADBACKEND") && argc == 4) {
        if (backend_known(argv[2])) return RedisModule_ReplyWithSimpleString(ctx, "OK");
        return reply_errorf(ctx, "ERR backend %s is not available: nekrs_ml model workers run TORCH, TF, TFLITE and ONNX",
                            arg_text(argv[2]));
    }
    return reply_errorf(ctx, "ERR AI.CONFIG %s is not supported (GET MODEL_CHUNK_SIZE, MODEL_CHUNK_SIZE n, "
                             "BACKENDSPATH, LOADBACKEND TORCH|TF|TFLITE|ONNX)", arg_text(argv[1]));
}

static int cmd_unsupported(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argc;
    if (RedisModule_IsKeysPositionRequest(ctx)) return REDISMODULE_OK;
    return reply_errorf(ctx, "ERR %s is not supported by nekrs_ml's RedisAI compatibility "
                             "(see docs/smartredis.md)", arg_text(argv[0]));
}

/* --- worker side: NKML.AI.TAKE timeout_ms; NKML.AI.DONE id OK out... | ERR text -------------------- */
static void reply_job(RedisModuleCtx *ctx, Job *job) {
    RedisModule_ReplyWithArray(ctx, 7);
    RedisModule_ReplyWithLongLong(ctx, (long long)job->id);
    reply_text(ctx, job->kind == KIND_MODEL ? "model" : "script");
    RedisModule_ReplyWithStringBuffer(ctx, job->key, job->key_len);
    RedisModule_ReplyWithStringBuffer(ctx, job->function ? job->function : "", job->function_len);
    RedisModule_ReplyWithLongLong(ctx, (long long)job->store_id);
    RedisModule_ReplyWithArray(ctx, job->n_in);
    for (int i = 0; i < job->n_in; i++) RedisModule_ReplyWithStringBuffer(ctx, job->in_data[i], job->in_len[i]);
    RedisModule_ReplyWithLongLong(ctx, job->n_out);
}

/* Hands the oldest queued job to the calling worker; 0 when none is queued. The job's inputs
 * are in the worker's reply now: the job lets go of its copies. */
static int take_job(RedisModuleCtx *ctx) {
    for (Job *j = jobs_head; j; j = j->next) {
        if (!j->owner) {
            j->owner = RedisModule_GetClientId(ctx);
            reply_job(ctx, j);
            job_release_inputs(j);
            return 1;
        }
    }
    return 0;
}

/* Removes the waiting worker blocked as `bc`; 0 when it is not waiting (any more). */
static int taker_unlink(RedisModuleBlockedClient *bc) {
    for (Taker **p = &takers_head; *p; p = &(*p)->next) {
        if ((*p)->bc == bc) {
            Taker *t = *p;
            *p = t->next;
            nk_free(t);
            return 1;
        }
    }
    return 0;
}

static int take_reply(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    Taker *t = RedisModule_GetBlockedClientPrivateData(ctx);
    if (t) t->served = 1;
    if (!take_job(ctx)) RedisModule_ReplyWithNull(ctx);
    return REDISMODULE_OK;
}

/* A woken worker's record, after its reply callback ran or (when it went away meanwhile) did
 * not: then a queued job would wait for nobody, so the next waiting worker is woken. */
static void take_free(RedisModuleCtx *ctx, void *privdata) {
    (void)ctx;
    Taker *t = privdata;
    int missed = !t->served;
    nk_free(t);
    if (missed && job_queued()) wake_taker();
}

static int take_timeout(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    RedisModuleBlockedClient *bc = RedisModule_GetBlockedClientHandle(ctx);
    taker_unlink(bc);
    if (!take_job(ctx)) RedisModule_ReplyWithNull(ctx);
    RedisModule_UnblockClient(bc, NULL);
    return REDISMODULE_OK;
}

/* The waiting worker disconnected or was unblocked (CLIENT UNBLOCK ... ERROR): it waits no
 * more, so no job is handed to it. */
static void take_disconnected(RedisModuleCtx *ctx, RedisModuleBlockedClient *bc) {
    (void)ctx;
    if (taker_unlink(bc)) RedisModule_UnblockClient(bc, NULL);
}

#define TAKE_MAX_WAIT_MS 3600000LL

static int cmd_take(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 2) return RedisModule_WrongArity(ctx);
    long long timeout_ms;
    if (RedisModule_StringToLongLong(argv[1], &timeout_ms) != REDISMODULE_OK || timeout_ms < 0 ||
        timeout_ms > TAKE_MAX_WAIT_MS)
        return RedisModule_ReplyWithError(ctx, "ERR NKML.AI.TAKE takes a timeout in milliseconds "
                                               "(0 to 3600000)");
    if (RedisModule_GetContextFlags(ctx) & (REDISMODULE_CTX_FLAGS_MULTI | REDISMODULE_CTX_FLAGS_LUA))
        return RedisModule_ReplyWithError(ctx, "ERR NKML.AI.TAKE cannot run inside MULTI or a script");
    worker_add(RedisModule_GetClientId(ctx));
    if (take_job(ctx)) return REDISMODULE_OK;
    if (timeout_ms == 0) return RedisModule_ReplyWithNull(ctx);
    Taker *t = nk_calloc(1, sizeof *t);
    if (!t) return RedisModule_ReplyWithError(ctx, "ERR out of memory");
    t->client = RedisModule_GetClientId(ctx);
    t->bc = RedisModule_BlockClient(ctx, take_reply, take_timeout, take_free, timeout_ms);
    RedisModule_SetDisconnectCallback(t->bc, take_disconnected);
    Taker **p = &takers_head;
    while (*p) p = &(*p)->next;
    *p = t;
    return REDISMODULE_OK;
}

static int cmd_done(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 3) return RedisModule_WrongArity(ctx);
    long long id;
    if (RedisModule_StringToLongLong(argv[1], &id) != REDISMODULE_OK)
        return RedisModule_ReplyWithError(ctx, "ERR NKML.AI.DONE takes a job id");
    Job *job = NULL;
    uint64_t me = RedisModule_GetClientId(ctx);
    for (Job *j = jobs_head; j; j = j->next)
        if (j->id == (uint64_t)id && j->owner == me) job = j;
    if (!job)
        return RedisModule_ReplyWithError(ctx, "ERR job is not pending for this worker "
                                               "(its caller timed out or disconnected)");
    if (arg_is(argv[2], "ERR")) {
        const char *text = argc > 3 ? arg_text(argv[3]) : "unknown error";
        job_fail(job, "ERR %s", text);
        return RedisModule_ReplyWithSimpleString(ctx, "OK");
    }
    if (!arg_is(argv[2], "OK")) return RedisModule_ReplyWithError(ctx, "ERR NKML.AI.DONE id OK|ERR ...");
    int n = argc - 3;
    int expected = job->n_out;
    if (job->kind == KIND_SCRIPT && n > expected) n = expected; /* extra results are dropped */
    if (n != expected) {
        job_fail(job, "ERR the %s returned %d outputs, %d were asked for",
                 job->kind == KIND_MODEL ? "model" : "script", argc - 3, expected);
        return RedisModule_ReplyWithError(ctx, "ERR wrong number of outputs");
    }
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *v = RedisModule_StringPtrLen(argv[3 + i], &len);
        TensorView t;
        const char *why = tensor_parse(v, len, &t);
        if (why) {
            job_fail(job, "ERR output %d: %s", i, why);
            return RedisModule_ReplyWithError(ctx, "ERR bad output tensor");
        }
        if ((unsigned long long)len > (unsigned long long)max_value_bytes) {
            job_fail(job, "ERR output %d of %.*s takes %zu bytes, over this server's limit of %lld "
                          "bytes for one value (nkml_ai's MAX_VALUE_BYTES load argument); no output "
                          "was written", i, (int)job->key_len, job->key, len, max_value_bytes);
            return reply_errorf(ctx, "ERR output %d takes %zu bytes, over MAX_VALUE_BYTES (%lld)", i,
                                len, max_value_bytes);
        }
    }
    /* the outputs are stored as the very strings received (no copy) by the caller's reply */
    for (int i = 0; i < n; i++) {
        job->out_values[i] = RedisModule_HoldString(NULL, argv[3 + i]);
        RedisModule_TrimStringAllocation(job->out_values[i]);
    }
    job_unlink(job);
    stats_count(job, 0);
    RedisModule_UnblockClient(job->bc, job);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

static int cmd_workers(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    if (argc != 1) return RedisModule_WrongArity(ctx);
    int queued = 0, taken = 0;
    for (Job *j = jobs_head; j; j = j->next) {
        if (j->owner) taken++;
        else queued++;
    }
    RedisModule_ReplyWithArray(ctx, 10);
    reply_text(ctx, "workers");
    RedisModule_ReplyWithLongLong(ctx, worker_count());
    reply_text(ctx, "queued");
    RedisModule_ReplyWithLongLong(ctx, queued);
    reply_text(ctx, "running");
    RedisModule_ReplyWithLongLong(ctx, taken);
    reply_text(ctx, "job_bytes");
    RedisModule_ReplyWithLongLong(ctx, job_bytes);
    reply_text(ctx, "stats");
    RedisModule_ReplyWithLongLong(ctx, stats_count_entries());
    return REDISMODULE_OK;
}

/* A disconnected worker: its jobs fail at once (and all queued ones when it was the last
 * worker). A blocked caller's job and a waiting worker's wait end in their disconnect
 * callbacks (execute_disconnected, take_disconnected), which also serve CLIENT UNBLOCK. */
static void on_client_change(RedisModuleCtx *ctx, RedisModuleEvent eid, uint64_t subevent, void *data) {
    (void)ctx;
    (void)eid;
    if (subevent != REDISMODULE_SUBEVENT_CLIENT_CHANGE_DISCONNECTED) return;
    uint64_t client = ((RedisModuleClientInfoV1 *)data)->id;
    int was_worker = 0;
    for (Worker **p = &workers_head; *p; p = &(*p)->next) {
        if ((*p)->client == client) {
            Worker *w = *p;
            *p = w->next;
            nk_free(w);
            was_worker = 1;
            break;
        }
    }
    if (!was_worker) return;
    int none_left = worker_count() == 0;
    Job *j = jobs_head;
    while (j) {
        Job *next = j->next;
        if (j->owner == client) {
            job_fail(j, "ERR the model worker running %.*s disconnected (died?) before it answered",
                     (int)j->key_len, j->key);
        } else if (none_left && !j->owner) {
            job_fail(j, "ERR no nekrs_ml model worker is left on this server");
        }
        j = next;
    }
}

/* --- registration ----------------------------------------------------------------------------------- */
/* A load argument's value: a positive integer. */
static int load_arg(RedisModuleCtx *ctx, RedisModuleString *name, RedisModuleString *value, long long *out) {
    long long v;
    if (RedisModule_StringToLongLong(value, &v) != REDISMODULE_OK || v <= 0) {
        RedisModule_Log(ctx, "warning", "nkml_ai: load argument %s takes a positive integer, not %s",
                        arg_text(name), arg_text(value));
        return -1;
    }
    *out = v;
    return 0;
}

#define LOAD_ARGS "EXECUTE_TIMEOUT ms, MAX_VALUE_BYTES n, MAX_JOB_BYTES n"

__attribute__((visibility("default"))) int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv,
                                                           int argc) {
    if (nkml_module_init(ctx, MODULE_NAME, MODULE_VERSION) != REDISMODULE_OK) return REDISMODULE_ERR;
    if (argc % 2) {
        RedisModule_Log(ctx, "warning", "nkml_ai: load arguments come in pairs (" LOAD_ARGS ")");
        return REDISMODULE_ERR;
    }
    for (int i = 0; i + 1 < argc; i += 2) {
        long long *target = arg_is(argv[i], "EXECUTE_TIMEOUT")   ? &execute_timeout_ms
                            : arg_is(argv[i], "MAX_VALUE_BYTES") ? &max_value_bytes
                            : arg_is(argv[i], "MAX_JOB_BYTES")   ? &max_job_bytes
                                                                  : NULL;
        if (!target) {
            RedisModule_Log(ctx, "warning", "nkml_ai: unknown load argument %s (" LOAD_ARGS ")",
                            arg_text(argv[i]));
            return REDISMODULE_ERR;
        }
        if (load_arg(ctx, argv[i], argv[i + 1], target) != 0) return REDISMODULE_ERR;
    }
    next_store_id = (uint64_t)RedisModule_Milliseconds() * 1000;
    struct {
        const char *name;
        RedisModuleCmdFunc fn;
        const char *flags;
        int first, last, step;
    } commands[] = {
        {"AI.TENSORSET", cmd_tensorset, "write deny-oom", 1, 1, 1},
        {"AI.TENSORGET", cmd_tensorget, "readonly", 1, 1, 1},
        {"AI.MODELSTORE", cmd_modelstore, "write deny-oom", 1, 1, 1},
        {"AI.MODELSET", cmd_modelstore, "write deny-oom", 1, 1, 1},
        {"AI.MODELGET", cmd_modelget, "readonly", 1, 1, 1},
        {"AI.MODELDEL", cmd_modeldel, "write", 1, 1, 1},
        {"AI.MODELEXECUTE", cmd_modelexecute, "write deny-oom getkeys-api", 1, 1, 1},
        {"AI.MODELRUN", cmd_modelrun, "write deny-oom getkeys-api", 1, 1, 1},
        {"AI.SCRIPTSET", cmd_scriptset, "write deny-oom", 1, 1, 1},
        {"AI.SCRIPTSTORE", cmd_scriptstore, "write deny-oom", 1, 1, 1},
        {"AI.SCRIPTGET", cmd_scriptget, "readonly", 1, 1, 1},
        {"AI.SCRIPTDEL", cmd_scriptdel, "write", 1, 1, 1},
        {"AI.SCRIPTRUN", cmd_scriptrun, "write deny-oom getkeys-api", 1, 1, 1},
        {"AI.SCRIPTEXECUTE", cmd_scriptexecute, "write deny-oom getkeys-api", 1, 1, 1},
        {"AI.INFO", cmd_info, "readonly", 1, 1, 1},
        {"AI.CONFIG", cmd_config, "", 0, 0, 0},
        {"AI.DAGEXECUTE", cmd_unsupported, "write getkeys-api", 0, 0, 0},
        {"AI.DAGEXECUTE_RO", cmd_unsupported, "readonly getkeys-api", 0, 0, 0},
        {"AI.DAGRUN", cmd_unsupported, "write getkeys-api", 0, 0, 0},
        {"AI.DAGRUN_RO", cmd_unsupported, "readonly getkeys-api", 0, 0, 0},
        {"AI.MODELSCAN", cmd_unsupported, "readonly", 0, 0, 0},
        {"AI.SCRIPTSCAN", cmd_unsupported, "readonly", 0, 0, 0},
        {"NKML.AI.TAKE", cmd_take, "", 0, 0, 0},
        {"NKML.AI.DONE", cmd_done, "write", 0, 0, 0},
        {"NKML.AI.WORKERS", cmd_workers, "readonly", 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (RedisModule_CreateCommand(ctx, commands[i].name, commands[i].fn, commands[i].flags,
                                      commands[i].first, commands[i].last, commands[i].step) != REDISMODULE_OK)
            return REDISMODULE_ERR;
    }
    RedisModuleEvent client_change = {REDISMODULE_EVENT_CLIENT_CHANGE, 1};
    RedisModule_SubscribeToServerEvent(ctx, client_change, on_client_change);
    return REDISMODULE_OK;
}
