#include "model.h"

#include <stdio.h>

int model_layers(const config_t *cfg, int classes, layer_spec_t *specs, int max, char *err, size_t errlen) {
    static const op_kind_t acts[] = {[CFG_ACT_RELU] = OP_RELU, [CFG_ACT_GELU] = OP_GELU, [CFG_ACT_TANH] = OP_TANH};
    int n = -1;
    char e[256] = "";
    switch (cfg->arch) {
    case CFG_ARCH_MLP:
        n = layers_mlp(cfg->hidden, cfg->nhidden, classes, acts[cfg->activation], specs, max);
        if (n < 0) snprintf(e, sizeof e, "too many hidden layers");
        break;
    case CFG_ARCH_CNN:
        n = layers_cnn(classes, specs, max);
        break;
    case CFG_ARCH_GPT:
        n = layers_gpt(cfg->n_layer, cfg->n_head, cfg->n_embd, classes, cfg->tie_embeddings, (float)cfg->dropout, specs,
                       max);
        if (n < 0) snprintf(e, sizeof e, "gpt: %d layers is more than this build's %d nodes allow", cfg->n_layer, max);
        break;
    default:
        n = layers_parse(cfg->layers, specs, max, e, sizeof e);
        break;
    }
    if (n < 0) snprintf(err, errlen, "[model] %s: %s", cfg->arch == CFG_ARCH_LAYERS ? "layers" : "arch", e);
    return n;
}
