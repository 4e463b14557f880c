/* nkml_ai: execution jobs and blocked clients: a caller of AI.MODELEXECUTE / AI.SCRIPTEXECUTE blocks
 * until a nekrs_ml model worker (NKML.AI.TAKE) answers its job (NKML.AI.DONE), its time runs
 * out, or the worker disconnects. Callers and workers are one file: a job links a caller's
 * blocked client to the worker that took it, and each side's callbacks end the other's. */
#include "nkml_ai.h"

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

typedef struct Taker {
    RedisModuleBlockedClient *bc;
    uint64_t client;
    int woken;               /* unblocked to take a job; its reply callback has not run yet */
    int served;              /* its reply callback ran */
    struct Taker *next;
} Taker;

typedef struct Worker {
    uint64_t client;
    struct Worker *next;
} Worker;

static Job *jobs_head;       /* queued and taken jobs, oldest first */
static uint64_t next_job_id;
static long long job_bytes;  /* input bytes all jobs hold now (at most MAX_JOB_BYTES) */

static Taker *takers_head;   /* workers blocked in NKML.AI.TAKE, oldest first */

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
int queue_job(RedisModuleCtx *ctx, int kind, RedisModuleString *keyname, uint64_t store_id,
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

int parse_io(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, int pos, int counted,
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
void report_io_keys(RedisModuleCtx *ctx, const IOArgs *io) {
    RedisModule_KeyAtPos(ctx, 1);
    for (int i = 0; i < io->n_keys; i++) RedisModule_KeyAtPos(ctx, io->keys_first + i);
    for (int i = 0; i < io->n_in; i++) RedisModule_KeyAtPos(ctx, io->in_first + i);
    for (int i = 0; i < io->n_out; i++) RedisModule_KeyAtPos(ctx, io->out_first + i);
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

int cmd_take(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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

int cmd_done(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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

int cmd_workers(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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
void on_client_change(RedisModuleCtx *ctx, RedisModuleEvent eid, uint64_t subevent, void *data) {
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
