/* The arena: one static block, carved by the plan's offsets (refimpl/memory_arena.py). A buffer
 * is opened at the event the plan says it is born and closed after the event it dies; the code
 * reaches a buffer only while it is open (fm_arena_get), and opening checks that it overlaps no
 * open buffer. The arena counts the open bytes (live_bytes, their maximum peak_live) and the
 * highest byte an open buffer reaches (high_water): docs/porting.md asserts both equal the
 * ledger's training peak. Built with -fsanitize=address, a closed buffer is poisoned, so any
 * access outside its planned lifetime is an AddressSanitizer error.
 */
#include "fedmef.h"

#include <stdio.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

void fm_arena_init(fm_arena *a, unsigned char *base, size_t size, const fm_plan_buffer *buf,
                   int nbuf, unsigned char *live) {
    a->base = base;
    a->size = size;
    a->buf = buf;
    a->nbuf = nbuf;
    a->live = live;
    a->event = -1;
    a->live_bytes = a->peak_live = a->high_water = 0;
    a->error[0] = '\0';
    memset(live, 0, (size_t)nbuf);
    POISON(base, size);
}

int fm_arena_find(const fm_arena *a, const char *name) {
    for (int i = 0; i < a->nbuf; ++i)
        if (strcmp(a->buf[i].name, name) == 0) return i;
    return -1;
}

int fm_arena_open(fm_arena *a, int id) {
    const fm_plan_buffer *b = &a->buf[id];
    if (a->live[id]) {
        snprintf(a->error, sizeof a->error, "buffer %s opened twice", b->name);
        return -1;
    }
    if ((size_t)b->offset + b->bytes > a->size) {
        snprintf(a->error, sizeof a->error, "buffer %s ends beyond the arena", b->name);
        return -1;
    }
    for (int j = 0; j < a->nbuf; ++j) {
        const fm_plan_buffer *o = &a->buf[j];
        if (a->live[j] && b->offset < o->offset + o->bytes && o->offset < b->offset + b->bytes) {
            snprintf(a->error, sizeof a->error, "buffer %s overlaps the open buffer %s",
                     b->name, o->name);
            return -1;
        }
    }
    a->live[id] = 1;
    a->live_bytes += b->bytes;
    if (a->live_bytes > a->peak_live) a->peak_live = a->live_bytes;
    if ((size_t)b->offset + b->bytes > a->high_water) a->high_water = b->offset + b->bytes;
    UNPOISON(a->base + b->offset, b->bytes);
    return 0;
}

int fm_arena_close(fm_arena *a, int id) {
    const fm_plan_buffer *b = &a->buf[id];
    if (!a->live[id]) {
        snprintf(a->error, sizeof a->error, "buffer %s closed but not open", b->name);
        return -1;
    }
    a->live[id] = 0;
    a->live_bytes -= b->bytes;
    POISON(a->base + b->offset, b->bytes);
    return 0;
}

/* The open buffer id, which must hold `need` bytes; NULL (with a->error) otherwise. */
void *fm_arena_get(fm_arena *a, int id, size_t need) {
    if (id < 0 || id >= a->nbuf || !a->live[id]) {
        snprintf(a->error, sizeof a->error, "buffer %s used while closed (event %d)",
                 id >= 0 && id < a->nbuf ? a->buf[id].name : "(none)", a->event);
        return NULL;
    }
    if (need > a->buf[id].bytes) {
        snprintf(a->error, sizeof a->error,
                 "buffer %s needs %lu bytes, the plan gives it %lu", a->buf[id].name,
                 (unsigned long)need, (unsigned long)a->buf[id].bytes);
        return NULL;
    }
    return a->base + a->buf[id].offset;
}

/* Open every buffer the plan makes born at `event` (state buffers, born 0 and dying at the last
 * event, are opened once per client by the caller, not here). */
int fm_arena_begin_event(fm_arena *a, int event) {
    a->event = event;
    for (int i = 0; i < a->nbuf; ++i)
        if (strncmp(a->buf[i].name, "state/", 6) != 0 && a->buf[i].born == event)
            if (fm_arena_open(a, i) != 0) return -1;
    return 0;
}

int fm_arena_end_event(fm_arena *a, int event) {
    for (int i = 0; i < a->nbuf; ++i)
        if (strncmp(a->buf[i].name, "state/", 6) != 0 && a->buf[i].died == event)
            if (fm_arena_close(a, i) != 0) return -1;
    a->event = -1;
    return 0;
}
