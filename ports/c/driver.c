/* fedmef_port REFERENCE.bin OUT.bin
 *
 * Runs every sampled client of every round of a conformance export (docs/conformance.md) through
 * the C port and writes, step by step, what it computed into OUT.bin (the tensor file), for
 * `fedmef conformance check OUT.bin --against REFERENCE_DIR --steps local,growth`. From the
 * reference it reads only what a client receives: the global model and masks of the round (the
 * initial model, or the previous round's server step), the round plan (r{t}_start), the sampled
 * clients, their data and shuffles. Prints one JSON line with the arena's size, its peak of open
 * bytes and its high-water mark (docs/porting.md).
 */
#include "client.h"
#include "tensorfile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the arena: one static block of exactly the plan's size, 8-byte aligned */
static union {
    double align;
    unsigned char bytes[FM_PLAN_ARENA_BYTES];
} arena;

/* host memory of the dump (the recorder's copies, not the port's state) */
#define DUMP_BYTES (16u << 20)
#define DUMP_TENSORS 16384
static unsigned char dump_pool[DUMP_BYTES];
static tf_entry dump_entries[DUMP_TENSORS];

static int dump_failed;

static void on_step(void *ctx, const char *name) {
    tf_writer *w = ctx;
    snprintf(w->step, sizeof w->step, "%s", name);
}

static void on_slice(void *ctx, const char *key, int dtype, int ndim, const int64_t *shape,
                     int64_t start, int64_t count, const void *data) {
    tf_writer *w = ctx;
    if (!dump_failed && tf_put(w, key, dtype, ndim, shape, start, count, data) != 0) {
        fprintf(stderr, "fedmef_port: %s\n", w->error);
        dump_failed = 1;
    }
}

static int die(const char *what) {
    fprintf(stderr, "fedmef_port: %s\n", what);
    return 1;
}

static const tf_tensor *need(const tf_file *f, int dtype, const char *name, char *err) {
    const tf_tensor *t = tf_find(f, dtype, "%s", name);
    if (!t) snprintf(err, 256, "the reference lacks %.120s (or it is not of dtype code %d; export "
                     "the scenario with --set run.dtype=float32)", name, dtype);
    return t;
}

int main(int argc, char **argv) {
    static fm_client cl;
    static tf_file ref;
    static tf_writer w;
    char err[256], name[256];
    if (argc != 3) {
        fprintf(stderr, "usage: fedmef_port REFERENCE.bin OUT.bin\n"
                        "  REFERENCE.bin: conformance.bin of `fedmef conformance export DIR "
                        "--set run.dtype=float32`\n");
        return 2;
    }
    if (tf_read(&ref, argv[1]) != 0) return die(ref.error);
    tf_writer_init(&w, dump_pool, sizeof dump_pool, dump_entries, DUMP_TENSORS);
    const fm_observer obs = {&w, on_step, on_slice};
    if (fm_client_init(&cl, arena.bytes, sizeof arena.bytes, &obs) != 0) return die(cl.error);

    const char *pname[FM_MAX_PARAMS];
    int64_t pnumel[FM_MAX_PARAMS];
    const int nparams = fm_client_params(&cl, pname, pnumel, FM_MAX_PARAMS);
    const float *global[FM_MAX_PARAMS];
    const uint8_t *masks[FM_MAX_LAYERS];
    for (int s = 0; s < cl.nprunable; ++s) {
        snprintf(name, sizeof name, "inputs/init/mask/%s", cl.L[cl.prunable_layer[s]].name);
        const tf_tensor *t = need(&ref, FM_BOOL, name, err);
        if (!t) return die(err);
        masks[s] = t->data;
    }
    const tf_tensor *mean = need(&ref, FM_F32, "inputs/data/mean", err);
    const tf_tensor *std = need(&ref, FM_F32, "inputs/data/std", err);
    if (!mean || !std) return die(err);
    int rounds = 0, clients = 0;
    for (int t = 1;; ++t) {
        snprintf(name, sizeof name, "r%d_start/lr", t);
        const tf_tensor *lr = tf_find(&ref, FM_F64, "%s", name);
        if (!lr) break;
        fm_round_plan plan;
        memset(&plan, 0, sizeof plan);
        plan.t = t;
        memcpy(&plan.lr, lr->data, sizeof plan.lr);
        /* the global model a client of round t receives */
        for (int q = 0; q < nparams; ++q) {
            const tf_tensor *p = NULL;
            if (t == 1) {
                snprintf(name, sizeof name, "init/param/%s", pname[q]);
            } else {
                snprintf(name, sizeof name, "r%d_server/param/%s", t - 1, pname[q]);
                if (!tf_find(&ref, FM_F32, "%s", name))
                    snprintf(name, sizeof name, "r%d_server/agg/%s", t - 1, pname[q]);
            }
            if (!(p = need(&ref, FM_F32, name, err))) return die(err);
            if (tf_numel(p) != pnumel[q]) return die("a parameter's size differs from the plan");
            global[q] = (const float *)(const void *)p->data;
        }
        for (int s = 0; s < cl.nprunable && t > 1; ++s) {  /* masks after the last adjustment */
            const tf_tensor *m = tf_find(&ref, FM_BOOL, "r%d_server/mask/%s", t - 1,
                                         cl.L[cl.prunable_layer[s]].name);
            if (m) masks[s] = m->data;
        }
        const tf_tensor *gc = tf_find(&ref, FM_I64, "r%d_start/grow_counts", t);
        plan.grow_counts = gc ? (const int64_t *)(const void *)gc->data : NULL;
        for (int s = 0; s < cl.nprunable; ++s) {
            const tf_tensor *m = tf_find(&ref, FM_I64, "r%d_start/marked/%s", t,
                                         cl.L[cl.prunable_layer[s]].name);
            if (m) {
                plan.extrude = 1;
                plan.marked[s] = (const int64_t *)(const void *)m->data;
                plan.marked_count[s] = tf_numel(m);
            }
        }
        snprintf(name, sizeof name, "inputs/r%d/clients", t);
        const tf_tensor *ks = need(&ref, FM_I64, name, err);
        if (!ks) return die(err);
        for (int64_t j = 0; j < tf_numel(ks); ++j) {
            int64_t k;
            memcpy(&k, ks->data + 8 * j, 8);
            fm_client_data data;
            snprintf(name, sizeof name, "inputs/data/c%ld/x_u8", (long)k);
            const tf_tensor *x = need(&ref, FM_U8, name, err);
            snprintf(name, sizeof name, "inputs/data/c%ld/y", (long)k);
            const tf_tensor *y = need(&ref, FM_I64, name, err);
            if (!x || !y) return die(err);
            data.id = (int32_t)k;
            data.n = (int32_t)y->shape[0];
            data.x_u8 = x->data;
            data.y = (const int64_t *)(const void *)y->data;
            data.mean = (const float *)(const void *)mean->data;
            data.std = (const float *)(const void *)std->data;
            for (int e = 0; e < FM_HP_LOCAL_EPOCHS; ++e) {
                snprintf(name, sizeof name, "inputs/r%d/c%ld/shuffle/e%d", t, (long)k, e);
                const tf_tensor *sh = need(&ref, FM_I64, name, err);
                if (!sh) return die(err);
                if (tf_numel(sh) != data.n) return die("a shuffle is not a permutation of n");
                plan.shuffle[e] = (const int64_t *)(const void *)sh->data;
            }
            plan.grow_order = NULL;
            if (plan.grow_counts) {
                snprintf(name, sizeof name, "inputs/r%d/c%ld/grow_order", t, (long)k);
                const tf_tensor *go = need(&ref, FM_I64, name, err);
                if (!go) return die(err);
                plan.grow_order = (const int64_t *)(const void *)go->data;
            }
            if (fm_client_round(&cl, &data, &plan, global, masks) != 0) return die(cl.error);
            if (dump_failed) return 1;
            ++clients;
        }
        ++rounds;
    }
    if (rounds == 0) return die("the reference has no round (no r1_start/lr)");
    if (tf_write(&w, argv[2]) != 0) return die(w.error);
    printf("{\"arena_bytes\": %lu, \"peak_live\": %lu, \"high_water\": %lu, \"rounds\": %d, "
           "\"clients\": %d, \"tensors\": %d}\n", (unsigned long)sizeof arena.bytes,
           (unsigned long)cl.ar.peak_live, (unsigned long)cl.ar.high_water, rounds, clients,
           w.count);
    tf_free(&ref);
    return 0;
}
