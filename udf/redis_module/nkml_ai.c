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
 * 1 GiB).
 *
 * The sources by concern (nkml_ai.h declares what they share): nkml_ai_tensor.c, the tensor
 * format; nkml_ai_store.c, values, model and script records and their statistics;
 * nkml_ai_jobs.c, jobs and blocked clients (callers and workers); nkml_ai_commands.c, the AI.*
 * commands; this file, the module load. */
#include "nkml_ai.h"

#define MODULE_NAME "nkml_ai"
#define MODULE_VERSION 1

/* The module API functions, fetched by name at load (redis_module_api.h). */
#define NKML_DEFINE(ret, name, params) ret(*RedisModule_##name) params;
NKML_REDIS_MODULE_FUNCTIONS(NKML_DEFINE)
#undef NKML_DEFINE

/* Fetches every function above; fails when the server lacks one (Redis < 7.0). */
int nkml_module_init(RedisModuleCtx *ctx, const char *name, int version) {
    int (*get_api)(const char *, void *) = (int (*)(const char *, void *))((void **)ctx)[0];
#define NKML_FETCH(ret, fn, params)                                                             \
    if (get_api("RedisModule_" #fn, (void *)&RedisModule_##fn) != REDISMODULE_OK) return REDISMODULE_ERR;
    NKML_REDIS_MODULE_FUNCTIONS(NKML_FETCH)
#undef NKML_FETCH
    if (RedisModule_IsModuleNameBusy(name)) return REDISMODULE_ERR;
    RedisModule_SetModuleAttribs(ctx, name, version, REDISMODULE_APIVER_1);
    return REDISMODULE_OK;
}

/* --- configuration (load arguments) ----------------------------------------------------------- */
long long execute_timeout_ms = 60000;
long long max_value_bytes = 2LL * 1024 * 1024 * 1024;  /* MAX_VALUE_BYTES */
long long max_job_bytes = 1LL * 1024 * 1024 * 1024;    /* MAX_JOB_BYTES */
long long model_chunk_size = 511 * 1024 * 1024;        /* RedisAI's default */

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
