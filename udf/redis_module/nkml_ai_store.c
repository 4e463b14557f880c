/* nkml_ai: values this module writes: small reply and memory helpers, whole-value stores, the model
 * and script records (docs/protocol.md, "RedisAI compatibility") and their AI.INFO statistics. */
#include "nkml_ai.h"

/* --- small helpers ---------------------------------------------------------------------------- */
int arg_is(RedisModuleString *arg, const char *word) {
    size_t len;
    const char *s = RedisModule_StringPtrLen(arg, &len);
    return strlen(word) == len && strncasecmp(s, word, len) == 0;
}

/* Module memory comes from the server's allocator (RedisModule_TryAlloc): it is counted in
 * used_memory, so maxmemory applies to it, and a failed allocation is NULL, not an abort. */
void *nk_alloc(size_t n) {
    return RedisModule_TryAlloc(n ? n : 1);
}

void *nk_calloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = nk_alloc(n * size);
    if (p) memset(p, 0, n * size);
    return p;
}

void nk_free(void *p) {
    if (p) RedisModule_Free(p);
}

char *copy_bytes(const char *s, size_t len) {
    char *p = nk_alloc(len + 1);
    if (!p) return NULL;
    memcpy(p, s, len);
    p[len] = 0;
    return p;
}

int reply_verrorf(RedisModuleCtx *ctx, const char *fmt, va_list ap) {
    char text[512];
    vsnprintf(text, sizeof text, fmt, ap);
    return RedisModule_ReplyWithError(ctx, text);
}

int reply_errorf(RedisModuleCtx *ctx, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    reply_verrorf(ctx, fmt, ap);
    va_end(ap);
    return REDISMODULE_OK;
}

/* Fields of array replies are bulk strings, as RedisAI sends them (SmartRedis reads them so). */
int reply_text(RedisModuleCtx *ctx, const char *text) {
    return RedisModule_ReplyWithStringBuffer(ctx, text, strlen(text));
}

const char *arg_text(RedisModuleString *arg) {
    return RedisModule_StringPtrLen(arg, NULL);
}

/* --- stores: validate, build the whole new value, and only then replace the old one ---------- */

/* 0 when a value of `total` bytes may be stored; else replies why not and returns -1. */
int check_value_size(RedisModuleCtx *ctx, const char *command, RedisModuleString *keyname,
                            const char *what, size_t total) {
    if ((unsigned long long)total <= (unsigned long long)max_value_bytes) return 0;
    reply_errorf(ctx, "ERR %s %s: the %s takes %zu bytes, over this server's limit of %lld bytes "
                      "for one value (nkml_ai's MAX_VALUE_BYTES load argument); the key is unchanged",
                 command, arg_text(keyname), what, total, max_value_bytes);
    return -1;
}

/* `keyname` opened for writing when it is empty or holds a string; else replies WRONGTYPE and
 * returns NULL. */
RedisModuleKey *open_for_store(RedisModuleCtx *ctx, RedisModuleString *keyname) {
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
void value_append(RedisModuleCtx *ctx, RedisModuleString *value, const char *p, size_t len) {
    if (len) RedisModule_StringAppendBuffer(ctx, value, p, len);
}

/* Replaces the value of the open `key` with the built `value` (whose reference it takes). */
void value_store(RedisModuleCtx *ctx, RedisModuleKey *key, RedisModuleString *value) {
    RedisModule_TrimStringAllocation(value);
    RedisModule_StringSet(key, value);
    RedisModule_FreeString(ctx, value);
}

/* --- model and script records --------------------------------------------------------------- */
#define RECORD_MAGIC "NKAI"

uint64_t next_store_id;

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

int record_parse(const char *v, size_t len, Record *r) {
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
void record_name(const Record *r, uint32_t index, const char **s, size_t *len) {
    size_t off = 0;
    *s = "";
    *len = 0;
    for (uint32_t i = 0; i <= index; i++) get_str(r->names, r->names_len, &off, s, len);
}

/* Opens `keyname` and reads the record of `kind` there. Replies the error itself and returns
 * NULL when there is none; the caller closes the returned key. */
RedisModuleKey *open_record(RedisModuleCtx *ctx, RedisModuleString *keyname, int kind,
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

int store_record(RedisModuleCtx *ctx, const char *command, RedisModuleString *keyname,
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

static Stats *stats_head;

static Stats *stats_find(const char *key, size_t len) {
    for (Stats *s = stats_head; s; s = s->next)
        if (s->key_len == len && memcmp(s->key, key, len) == 0) return s;
    return NULL;
}

/* The statistics of version `store_id` of `key`: NULL when there are none (and, without
 * `create`, when those kept are of another version). */
Stats *stats_for(const char *key, size_t len, uint64_t store_id, int create) {
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

void stats_drop(const char *key, size_t len) {
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

int stats_count_entries(void) {
    int n = 0;
    for (Stats *s = stats_head; s; s = s->next) n++;
    return n;
}
