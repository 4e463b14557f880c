/* nkml_ai: the tensor format of docs/protocol.md (its constants and dtypes from nekrs_ml/protocol.tsv):
 * the RedisAI names of the dtypes and the parser of a stored tensor value. */
#include "nkml_ai.h"

/* --- tensors: nekrs_ml's format (nekrs_ml/protocol.tsv) ---------------------------------- */

#define DTYPE_ENTRY(name, code, size, redisai, ctype) \
    {#redisai, code, size, CTYPE_IS_FLOAT(ctype), CTYPE_IS_SIGNED(ctype)},
static const DType DTYPES[] = {NKML_DTYPES(DTYPE_ENTRY)};
#undef DTYPE_ENTRY
#define N_DTYPES (sizeof(DTYPES) / sizeof(DTYPES[0]))

const DType *dtype_by_name(const char *s, size_t len) {
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

void put_u64(char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (char)((v >> (8 * i)) & 0xff);
}

uint64_t get_u64(const char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | (unsigned char)p[i];
    return v;
}

void put_u32(char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (char)((v >> (8 * i)) & 0xff);
}

uint32_t get_u32(const char *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | (unsigned char)p[i];
    return v;
}

/* NULL when `value` is a whole, valid tensor; else why not. */
const char *tensor_parse(const char *value, size_t len, TensorView *t) {
    if (len < TENSOR_HEADER || memcmp(value, NKML_TENSOR_MAGIC, 4) != 0) return "not a nekrs_ml tensor";
    if (value[4] != NKML_TENSOR_FORMAT_VERSION) return "tensor format version is not 1";
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
