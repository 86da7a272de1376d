/* libFuzzer: the layer-list parser. Properties: the canonical text it writes
 * parses back to the same layers; and a model of small layers builds (or is
 * refused with a message) and runs forward and backward on tiny inputs
 * without touching memory it does not own. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "layers.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
    if (n > 4096) return 0;
    char *text = strndup((const char *)d, n);
    layer_spec_t a[LAYERS_MAX], b[LAYERS_MAX];
    char err[512], canon[8192];
    const int na = layers_parse(text, a, LAYERS_MAX, err, sizeof err);
    free(text);
    if (na < 0) return 0;
    layers_format(a, na, canon, sizeof canon);
    const int nb = layers_parse(canon, b, LAYERS_MAX, err, sizeof err);
    if (nb != na) abort(); /* the canonical form must parse back */
    for (int i = 0; i < na; i++)
        if (a[i].kind != b[i].kind || a[i].n != b[i].n || a[i].k != b[i].k || a[i].stride != b[i].stride ||
            a[i].pad != b[i].pad || a[i].p != b[i].p || a[i].nsrc != b[i].nsrc || a[i].src[0] != b[i].src[0] ||
            a[i].src[1] != b[i].src[1] || a[i].tie != b[i].tie)
            abort();
    /* small models only: the point is memory safety, not big allocations */
    for (int i = 0; i < na; i++)
        if (a[i].n > 64 || a[i].k > 9 || a[i].stride > 9 || a[i].pad > 9) return 0;
    graph_t *g = NULL;
    const int in[3] = {2, 9, 7};
    if (graph_create(&g, a, na, in, 5, 3, DEV_CPU, err, sizeof err)) return 0;
    graph_init_params(g, 1);
    graph_enable_input_grad(g);
    float *x;
    int32_t *y;
    graph_input_host(g, &x, &y);
    for (size_t i = 0; i < g->input.size; i++) x[i] = (float)((i * 37) % 11) - 5.0f;
    for (int i = 0; i < 3; i++) y[i] = i % 5;
    graph_input_commit(g, 3);
    g->training = 1;
    graph_forward(g, 3);
    graph_backward(g);
    graph_forward(g, 2); /* a partial batch */
    graph_backward(g);
    graph_destroy(g);
    return 0;
}
