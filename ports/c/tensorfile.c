/* Reader and writer of the FedMef tensor file (docs/conformance.md): little-endian, magic
 * "FMEFTNS\0", version 1, a JSON metadata block, a table of named tensors, 64-byte aligned C-order
 * data blocks. This host reads and writes in place (little-endian is checked at run time).
 */
#include "tensorfile.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) {
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static int little_endian(void) {
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

size_t tf_itemsize(int dtype) {
    switch (dtype) {
    case 1: case 7: case 8: return 4;
    case 2: case 9: case 10: return 8;
    case 5: case 6: return 2;
    case 3: case 4: case 11: return 1;
    default: return 0;
    }
}

static int bad(tf_file *f, const char *path, const char *why) {
    snprintf(f->error, sizeof f->error, "%.120s: %.120s", path, why);
    return -1;
}

int tf_read(tf_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    if (!little_endian()) return bad(f, path, "this reader runs on little-endian hosts only");
    FILE *fp = fopen(path, "rb");
    if (!fp) return bad(f, path, "cannot open");
    if (fseek(fp, 0, SEEK_END) != 0) { fclose(fp); return bad(f, path, "cannot seek"); }
    const long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    if (len < 24) { fclose(fp); return bad(f, path, "not a FedMef tensor file (too short)"); }
    f->buf = malloc((size_t)len);
    if (!f->buf || fread(f->buf, 1, (size_t)len, fp) != (size_t)len) {
        fclose(fp);
        return bad(f, path, "cannot read");
    }
    fclose(fp);
    f->len = (size_t)len;
    if (memcmp(f->buf, "FMEFTNS\0", 8) != 0) return bad(f, path, "not a FedMef tensor file");
    if (rd32(f->buf + 8) != 1) return bad(f, path, "tensor file version is not 1");
    const uint32_t count = rd32(f->buf + 12);
    const uint64_t meta = rd64(f->buf + 16);
    if (meta > f->len - 24) return bad(f, path, "truncated metadata");
    f->t = calloc(count ? count : 1, sizeof *f->t);
    if (!f->t) return bad(f, path, "out of memory");
    size_t pos = 24 + (size_t)meta;
    for (uint32_t i = 0; i < count; ++i) {
        tf_tensor *t = &f->t[i];
        if (pos + 2 > f->len) return bad(f, path, "truncated table");
        t->name_len = rd16(f->buf + pos);
        pos += 2;
        if (pos + t->name_len + 4 > f->len) return bad(f, path, "truncated table");
        t->name = (const char *)f->buf + pos;
        pos += t->name_len;
        t->dtype = f->buf[pos];
        t->ndim = f->buf[pos + 1];
        pos += 4;
        if (t->ndim > 8 || pos + 8u * t->ndim + 16 > f->len)
            return bad(f, path, "bad table entry");
        int64_t numel = 1;
        for (int k = 0; k < t->ndim; ++k, pos += 8) {
            t->shape[k] = (int64_t)rd64(f->buf + pos);
            numel *= t->shape[k];
        }
        const uint64_t off = rd64(f->buf + pos);
        t->nbytes = rd64(f->buf + pos + 8);
        pos += 16;
        if (off > f->len || t->nbytes > f->len - off || off % 64)
            return bad(f, path, "a tensor's data lies outside the file or is not 64-aligned");
        if (tf_itemsize(t->dtype) == 0 || (uint64_t)numel * tf_itemsize(t->dtype) != t->nbytes)
            return bad(f, path, "a tensor's size does not match its shape and dtype");
        t->data = f->buf + off;
    }
    f->count = (long)count;
    return 0;
}

void tf_free(tf_file *f) {
    free(f->buf);
    free(f->t);
    f->buf = NULL;
    f->t = NULL;
}

const tf_tensor *tf_find(const tf_file *f, int dtype, const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const size_t n = strlen(name);
    for (long i = 0; i < f->count; ++i)
        if (f->t[i].name_len == n && memcmp(f->t[i].name, name, n) == 0)
            return dtype == 0 || f->t[i].dtype == dtype ? &f->t[i] : NULL;
    return NULL;
}

int64_t tf_numel(const tf_tensor *t) {
    int64_t n = 1;
    for (int k = 0; k < t->ndim; ++k) n *= t->shape[k];
    return n;
}

/* ---- writer ---------------------------------------------------------------------------------- */
int tf_writer_init(tf_writer *w, unsigned char *pool, size_t cap, tf_entry *entries, int max) {
    memset(w, 0, sizeof *w);
    w->pool = pool;
    w->cap = cap;
    w->entries = entries;
    w->max = max;
    return 0;
}

int tf_put(tf_writer *w, const char *key, int dtype, int ndim, const int64_t *shape,
           int64_t start, int64_t count, const void *data) {
    char name[112];
    if ((size_t)snprintf(name, sizeof name, "%s/%s", w->step, key) >= sizeof name) {
        snprintf(w->error, sizeof w->error, "tensor name %s/%s too long", w->step, key);
        return -1;
    }
    tf_entry *e = NULL;
    for (int i = w->count - 1; i >= 0; --i)
        if (strcmp(w->entries[i].name, name) == 0) { e = &w->entries[i]; break; }
    const size_t item = tf_itemsize(dtype);
    if (!e) {
        int64_t numel = 1;
        for (int k = 0; k < ndim; ++k) numel *= shape[k];
        const size_t bytes = (size_t)numel * item;
        if (w->count == w->max || w->used + bytes + 64 > w->cap || ndim > 8) {
            snprintf(w->error, sizeof w->error, "dump buffer full at %s", name);
            return -1;
        }
        e = &w->entries[w->count++];
        memcpy(e->name, name, strlen(name) + 1);
        e->dtype = dtype;
        e->ndim = ndim;
        for (int k = 0; k < ndim; ++k) e->shape[k] = shape[k];
        e->offset = w->used;
        e->nbytes = bytes;
        memset(w->pool + w->used, 0, bytes);
        w->used += (bytes + 63) / 64 * 64;
    }
    if (e->dtype != dtype || start < 0 || (size_t)(start + count) * item > e->nbytes) {
        snprintf(w->error, sizeof w->error, "slice %ld+%ld of %s outside the tensor",
                 (long)start, (long)count, name);
        return -1;
    }
    if (count) memcpy(w->pool + e->offset + (size_t)start * item, data, (size_t)count * item);
    return 0;
}

static void put16(FILE *fp, uint16_t v) {
    const unsigned char b[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    fwrite(b, 1, 2, fp);
}
static void put32(FILE *fp, uint32_t v) {
    put16(fp, (uint16_t)v);
    put16(fp, (uint16_t)(v >> 16));
}
static void put64(FILE *fp, uint64_t v) {
    put32(fp, (uint32_t)v);
    put32(fp, (uint32_t)(v >> 32));
}
static void zeros(FILE *fp, size_t n) {
    static const unsigned char z[64];
    while (n) {
        const size_t k = n < 64 ? n : 64;
        fwrite(z, 1, k, fp);
        n -= k;
    }
}

/* The file, written to "<path>.tmp" and renamed over path (a reader never sees half of it). */
int tf_write(tf_writer *w, const char *path) {
    static const char meta[] = "{}";
    const size_t meta_len = 8;  /* "{}" zero-padded to a multiple of 8 */
    size_t table = 0;
    for (int i = 0; i < w->count; ++i)
        table += 2 + strlen(w->entries[i].name) + 4 + 8 * (size_t)w->entries[i].ndim + 16;
    const size_t header = 24 + meta_len + table;
    const size_t data0 = (header + 63) / 64 * 64;
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        snprintf(w->error, sizeof w->error, "%.200s: cannot create", tmp);
        return -1;
    }
    fwrite("FMEFTNS\0", 1, 8, fp);
    put32(fp, 1);
    put32(fp, (uint32_t)w->count);
    put64(fp, meta_len);
    fwrite(meta, 1, 2, fp);
    zeros(fp, meta_len - 2);
    for (int i = 0; i < w->count; ++i) {
        const tf_entry *e = &w->entries[i];
        put16(fp, (uint16_t)strlen(e->name));
        fwrite(e->name, 1, strlen(e->name), fp);
        const unsigned char code[4] = {(unsigned char)e->dtype, (unsigned char)e->ndim, 0, 0};
        fwrite(code, 1, 4, fp);
        for (int k = 0; k < e->ndim; ++k) put64(fp, (uint64_t)e->shape[k]);
        put64(fp, data0 + e->offset);
        put64(fp, e->nbytes);
    }
    zeros(fp, data0 - header);
    fwrite(w->pool, 1, w->used, fp);
    const int ok = !ferror(fp);
    if (fclose(fp) != 0 || !ok || rename(tmp, path) != 0) {
        remove(tmp);
        snprintf(w->error, sizeof w->error, "%.200s: write failed", path);
        return -1;
    }
    return 0;
}
