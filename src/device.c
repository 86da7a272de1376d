/* The device layer's dispatch, its CPU implementation, and the loader of
 * the CUDA plugin (device_cuda.h says why it is a plugin). */
#include "device.h"

#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device_cuda.h"
#include "ops.h"

static const ddp_cuda_api_t *cu; /* set once device_open(DEV_CUDA) succeeded */

struct device_event {
    device_t dev;
    void *ev;
};

static const ddp_cuda_api_t *load_plugin(char *err, size_t errlen) {
    char path[PATH_MAX + 32];
    const char *env = getenv("DDP_CUDA_LIB");
    if (env && *env) {
        snprintf(path, sizeof path, "%s", env);
    } else {
        char exe[PATH_MAX];
        const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) return snprintf(err, errlen, "cannot find the program's directory (set DDP_CUDA_LIB)"), NULL;
        exe[n] = 0;
        snprintf(path, sizeof path, "%s/../lib/libddp_cuda.so", dirname(exe));
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(err, errlen, "[train] device = cuda: cannot load the CUDA plugin %s: %s (is this a CUDA build? make CUDA=1)",
                 path, dlerror());
        return NULL;
    }
    const ddp_cuda_api_t *api = dlsym(h, DDP_CUDA_API_SYMBOL);
    if (!api) snprintf(err, errlen, "%s: no symbol %s", path, DDP_CUDA_API_SYMBOL);
    return api; /* the plugin stays loaded for the process's life */
}

int device_open(device_t dev, int gpu, int local_rank, int tf32, char *err, size_t errlen) {
    if (dev == DEV_CPU) return 0;
    if (dev != DEV_CUDA) return snprintf(err, errlen, "unknown device %d", (int)dev), -1;
    if (cu) return 0;
    const ddp_cuda_api_t *api = load_plugin(err, errlen);
    if (!api || api->open(gpu, local_rank, tf32, err, errlen)) return -1;
    cu = api;
    return 0;
}

int device_ordinal(device_t dev) { return dev == DEV_CUDA && cu ? cu->ordinal() : -1; }
const op_impl_t *device_cuda_ops(void) { return cu ? cu->ops : NULL; }

void device_optim_update(const struct optim *o, float *p, const float *g, float *m, float *v, size_t n, float lr) {
    cu->optim_update(o, p, g, m, v, n, lr);
}

/* Device memory exists only once the device is open: a CUDA call before
 * that is a bug in the caller, answered with a failure, never a crash. */
#define ON_CUDA(dev) ((dev) == DEV_CUDA)
#define NEED_CU(fail_value) do { if (!cu) return fail_value; } while (0)

void *device_alloc(device_t dev, size_t bytes) {
    if (ON_CUDA(dev)) {
        NEED_CU(NULL);
        return cu->alloc(bytes);
    }
    bytes = (bytes + 255) & ~(size_t)255;
    void *p = NULL;
    if (posix_memalign(&p, 256, bytes ? bytes : 256)) return NULL;
    memset(p, 0, bytes ? bytes : 256);
    return p;
}

void device_free(device_t dev, void *p) {
    if (!p) return;
    if (ON_CUDA(dev) && cu) cu->free(p);
    else if (!ON_CUDA(dev)) free(p);
}

/* pinned once a GPU is open (copies from it run at full speed, async) */
void *device_host_alloc(size_t bytes) { return cu ? cu->host_alloc(bytes) : device_alloc(DEV_CPU, bytes); }

void device_host_free(void *p) {
    if (cu) cu->host_free(p);
    else free(p);
}

int device_to_host(device_t dev, void *host, const void *src, size_t bytes) {
    if (ON_CUDA(dev)) {
        NEED_CU(-1);
        return cu->to_host(host, src, bytes);
    }
    if (host != src && bytes) memcpy(host, src, bytes);
    return 0;
}

int device_from_host(device_t dev, void *dst, const void *host, size_t bytes) {
    if (ON_CUDA(dev)) {
        NEED_CU(-1);
        return cu->from_host(dst, host, bytes, 0);
    }
    if (dst != host && bytes) memcpy(dst, host, bytes);
    return 0;
}

int device_from_host_async(device_t dev, void *dst, const void *host, size_t bytes) {
    if (ON_CUDA(dev)) {
        NEED_CU(-1);
        return cu->from_host(dst, host, bytes, 1);
    }
    return device_from_host(dev, dst, host, bytes);
}

int device_copy(device_t dev, void *dst, const void *src, size_t bytes) {
    if (ON_CUDA(dev)) {
        NEED_CU(-1);
        return cu->copy(dst, src, bytes);
    }
    if (dst != src && bytes) memmove(dst, src, bytes);
    return 0;
}

int device_memset0(device_t dev, void *p, size_t bytes) {
    if (ON_CUDA(dev)) {
        NEED_CU(-1);
        return cu->memset0(p, bytes);
    }
    if (bytes) memset(p, 0, bytes);
    return 0;
}

int device_sync(device_t dev) { return ON_CUDA(dev) ? (cu ? cu->sync() : -1) : 0; }
const char *device_error(void) { return cu ? cu->error() : "the CUDA device is not open"; }
void *device_stream(device_t dev) { return ON_CUDA(dev) && cu ? cu->stream() : NULL; }

device_event_t *device_event_new(device_t dev) {
    device_event_t *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->dev = dev;
    if (ON_CUDA(dev) && (!cu || !(e->ev = cu->event_new()))) {
        free(e);
        return NULL;
    }
    return e;
}

void device_event_free(device_event_t *e) {
    if (!e) return;
    if (e->ev) cu->event_free(e->ev);
    free(e);
}

/* CPU work is done when its call returns: nothing to record or wait for */
void device_event_record(device_event_t *e) {
    if (e && e->ev) cu->event_record(e->ev);
}

void device_event_wait(device_event_t *e) {
    if (e && e->ev) cu->event_wait(e->ev);
}
