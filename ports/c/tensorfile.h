/* The FedMef tensor file (docs/conformance.md, "The binary tensor file"): a reader of the
 * reference dump and a writer of the port's dump. Host-side I/O of the driver, outside the arena.
 */
#ifndef FEDMEF_TENSORFILE_H
#define FEDMEF_TENSORFILE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *name;  /* not NUL-terminated: name_len bytes */
    uint16_t name_len;
    uint8_t dtype, ndim;
    int64_t shape[8];
    const unsigned char *data;
    uint64_t nbytes;
} tf_tensor;

typedef struct {
    unsigned char *buf;
    size_t len;
    tf_tensor *t;
    long count;
    char error[256];
} tf_file;

int tf_read(tf_file *f, const char *path);
void tf_free(tf_file *f);
/* the tensor called name (printf format), of dtype `dtype` (0: any), or NULL */
const tf_tensor *tf_find(const tf_file *f, int dtype, const char *fmt, ...);
int64_t tf_numel(const tf_tensor *t);

/* A dump assembled in memory from slices (zero-filled on creation), written once. */
typedef struct {
    char name[112];
    int dtype, ndim;
    int64_t shape[8];
    size_t offset, nbytes;
} tf_entry;

typedef struct {
    unsigned char *pool;
    size_t cap, used;
    tf_entry *entries;
    int count, max;
    char step[64];
    char error[256];
} tf_writer;

int tf_writer_init(tf_writer *w, unsigned char *pool, size_t cap, tf_entry *entries, int max);
/* `count` elements at flat position `start` of tensor "<step>/<key>" */
int tf_put(tf_writer *w, const char *key, int dtype, int ndim, const int64_t *shape,
           int64_t start, int64_t count, const void *data);
int tf_write(tf_writer *w, const char *path);
size_t tf_itemsize(int dtype);

#endif
