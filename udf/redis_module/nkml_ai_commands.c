/* nkml_ai: the RedisAI commands SmartRedis sends: tensors, models and scripts, execution, AI.INFO and
 * AI.CONFIG. One file: each command is a short parser over the records and jobs of the other files,
 * and together they are the command table RedisAI defines. */
#include "nkml_ai.h"

/* --- AI.TENSORSET key type dim... [BLOB data | VALUES v...] -------------------------------------- */
int cmd_tensorset(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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
#define STORE_VALUE(name, code, size, redisai, ctype)                                  \
            case code: {                                                               \
                ctype x = CTYPE_IS_FLOAT(ctype) ? (ctype)dv : (ctype)lv;               \
                memcpy(p, &x, size);                                                   \
                break;                                                                 \
            }
            NKML_DTYPES(STORE_VALUE)
#undef STORE_VALUE
            }
        }
    }
    char head[TENSOR_HEADER + 8 * TENSOR_MAX_RANK];
    memcpy(head, NKML_TENSOR_MAGIC, 4);
    head[4] = NKML_TENSOR_FORMAT_VERSION;
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
#define REPLY_VALUE(name, code, size, redisai, ctype)                                      \
        case code: {                                                                       \
            ctype x;                                                                       \
            memcpy(&x, p, size);                                                           \
            if (CTYPE_IS_FLOAT(ctype)) RedisModule_ReplyWithDouble(ctx, (double)x);        \
            else RedisModule_ReplyWithLongLong(ctx, (long long)x);                         \
            break;                                                                         \
        }
        NKML_DTYPES(REPLY_VALUE)
#undef REPLY_VALUE
        }
    }
}

/* --- AI.TENSORGET key [META] [BLOB | VALUES] ------------------------------------------------------ */
int cmd_tensorget(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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

/* The backends the model workers evaluate (nekrs_ml/models/backends.py). */
static int backend_known(RedisModuleString *name) {
    return arg_is(name, "TORCH") || arg_is(name, "TF") || arg_is(name, "TFLITE") || arg_is(name, "ONNX");
}

/* --- AI.MODELSTORE key backend device [TAG t] [BATCHSIZE n [MINBATCHSIZE m [MINBATCHTIMEOUT t]]]
 *     [INPUTS n ...] [OUTPUTS n ...] BLOB chunk... -------------------------------------------- */
int cmd_modelstore(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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
int cmd_modelget(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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

int cmd_modeldel(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return delete_record(ctx, argv, argc, KIND_MODEL);
}

int cmd_scriptdel(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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

int cmd_modelexecute(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return model_execute(ctx, argv, argc, 1);
}

int cmd_modelrun(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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

int cmd_scriptset(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return script_store(ctx, argv, argc, 0);
}

int cmd_scriptstore(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return script_store(ctx, argv, argc, 1);
}

/* --- AI.SCRIPTGET key [META] [SOURCE] -------------------------------------------------------------- */
int cmd_scriptget(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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

int cmd_scriptrun(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return script_execute(ctx, argv, argc, 0);
}

int cmd_scriptexecute(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    return script_execute(ctx, argv, argc, 1);
}

/* --- AI.INFO key [RESETSTAT] ------------------------------------------------------------------------ */
int cmd_info(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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
int cmd_config(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
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

int cmd_unsupported(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argc;
    if (RedisModule_IsKeysPositionRequest(ctx)) return REDISMODULE_OK;
    return reply_errorf(ctx, "ERR %s is not supported by nekrs_ml's RedisAI compatibility "
                             "(see docs/smartredis.md)", arg_text(argv[0]));
}
