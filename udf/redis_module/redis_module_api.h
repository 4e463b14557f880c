/* The part of the Redis module API (https://redis.io/docs/latest/develop/reference/modules/)
 * that nkml_ai uses, declared from its documentation. A module receives every function by
 * name through the getter the server stores as the first field of the load context. */
#ifndef NKML_REDIS_MODULE_API_H
#define NKML_REDIS_MODULE_API_H

#include <stddef.h>
#include <stdint.h>

#define REDISMODULE_OK 0
#define REDISMODULE_ERR 1
#define REDISMODULE_APIVER_1 1

#define REDISMODULE_READ (1 << 0)
#define REDISMODULE_WRITE (1 << 1)

#define REDISMODULE_KEYTYPE_EMPTY 0
#define REDISMODULE_KEYTYPE_STRING 1

#define REDISMODULE_CTX_FLAGS_LUA (1 << 0)
#define REDISMODULE_CTX_FLAGS_MULTI (1 << 1)

#define REDISMODULE_EVENT_CLIENT_CHANGE 4
#define REDISMODULE_SUBEVENT_CLIENT_CHANGE_DISCONNECTED 1

typedef struct RedisModuleCtx RedisModuleCtx;
typedef struct RedisModuleString RedisModuleString;
typedef struct RedisModuleKey RedisModuleKey;
typedef struct RedisModuleBlockedClient RedisModuleBlockedClient;

typedef struct RedisModuleEvent {
    uint64_t id;
    uint64_t dataver;
} RedisModuleEvent;

typedef struct RedisModuleClientInfoV1 {
    uint64_t version;
    uint64_t flags;
    uint64_t id;
    char addr[46];
    uint16_t port;
    uint16_t db;
} RedisModuleClientInfoV1;

typedef int (*RedisModuleCmdFunc)(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
typedef void (*RedisModuleDisconnectFunc)(RedisModuleCtx *ctx, RedisModuleBlockedClient *bc);
typedef void (*RedisModuleEventCallback)(RedisModuleCtx *ctx, RedisModuleEvent eid,
                                         uint64_t subevent, void *data);

/* Each entry: return type, name, parameters. */
#define NKML_REDIS_MODULE_FUNCTIONS(X)                                                          \
    X(void, SetModuleAttribs, (RedisModuleCtx *, const char *, int, int))                       \
    X(int, IsModuleNameBusy, (const char *))                                                     \
    X(int, CreateCommand, (RedisModuleCtx *, const char *, RedisModuleCmdFunc, const char *,    \
                           int, int, int))                                                       \
    X(int, WrongArity, (RedisModuleCtx *))                                                       \
    X(int, ReplyWithLongLong, (RedisModuleCtx *, long long))                                     \
    X(int, ReplyWithError, (RedisModuleCtx *, const char *))                                     \
    X(int, ReplyWithSimpleString, (RedisModuleCtx *, const char *))                              \
    X(int, ReplyWithArray, (RedisModuleCtx *, long))                                             \
    X(int, ReplyWithStringBuffer, (RedisModuleCtx *, const char *, size_t))                      \
    X(int, ReplyWithNull, (RedisModuleCtx *))                                                    \
    X(int, ReplyWithDouble, (RedisModuleCtx *, double))                                          \
    X(const char *, StringPtrLen, (const RedisModuleString *, size_t *))                         \
    X(int, StringToLongLong, (const RedisModuleString *, long long *))                           \
    X(int, StringToDouble, (const RedisModuleString *, double *))                                \
    X(RedisModuleString *, CreateString, (RedisModuleCtx *, const char *, size_t))               \
    X(void, FreeString, (RedisModuleCtx *, RedisModuleString *))                                 \
    X(RedisModuleKey *, OpenKey, (RedisModuleCtx *, RedisModuleString *, int))                   \
    X(void, CloseKey, (RedisModuleKey *))                                                        \
    X(int, KeyType, (RedisModuleKey *))                                                          \
    X(int, DeleteKey, (RedisModuleKey *))                                                        \
    X(int, StringSet, (RedisModuleKey *, RedisModuleString *))                                   \
    X(int, StringAppendBuffer, (RedisModuleCtx *, RedisModuleString *, const char *, size_t))    \
    X(void, TrimStringAllocation, (RedisModuleString *))                                         \
    X(RedisModuleString *, HoldString, (RedisModuleCtx *, RedisModuleString *))                  \
    X(char *, StringDMA, (RedisModuleKey *, size_t *, int))                                      \
    X(RedisModuleBlockedClient *, BlockClient,                                                   \
      (RedisModuleCtx *, RedisModuleCmdFunc, RedisModuleCmdFunc,                                 \
       void (*)(RedisModuleCtx *, void *), long long))                                           \
    X(int, UnblockClient, (RedisModuleBlockedClient *, void *))                                  \
    X(void, SetDisconnectCallback, (RedisModuleBlockedClient *, RedisModuleDisconnectFunc))      \
    X(void *, GetBlockedClientPrivateData, (RedisModuleCtx *))                                   \
    X(RedisModuleBlockedClient *, GetBlockedClientHandle, (RedisModuleCtx *))                    \
    X(int, IsKeysPositionRequest, (RedisModuleCtx *))                                            \
    X(void, KeyAtPos, (RedisModuleCtx *, int))                                                   \
    X(unsigned long long, GetClientId, (RedisModuleCtx *))                                       \
    X(int, SubscribeToServerEvent, (RedisModuleCtx *, RedisModuleEvent, RedisModuleEventCallback)) \
    X(int, ReplicateVerbatim, (RedisModuleCtx *))                                                \
    X(int, Replicate, (RedisModuleCtx *, const char *, const char *, ...))                       \
    X(void *, TryAlloc, (size_t))                                                                \
    X(void, Free, (void *))                                                                      \
    X(void, Log, (RedisModuleCtx *, const char *, const char *, ...))                            \
    X(int, GetContextFlags, (RedisModuleCtx *))                                                  \
    X(long long, Milliseconds, (void))                                                           \
    X(uint64_t, MonotonicMicroseconds, (void))

#define NKML_DECLARE(ret, name, params) extern ret(*RedisModule_##name) params;
NKML_REDIS_MODULE_FUNCTIONS(NKML_DECLARE)
#undef NKML_DECLARE

/* Fetches every function above (nkml_ai.c); fails when the server lacks one (Redis < 7.0). */
int nkml_module_init(RedisModuleCtx *ctx, const char *name, int version);

#endif
