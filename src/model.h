/* From configuration to layer specs: the named architectures and the
 * layer-list syntax. */
#ifndef DDP_MODEL_H
#define DDP_MODEL_H

#include <stddef.h>

#include "config.h"
#include "layers.h"

/* Fills specs for cfg's [model]; returns the count or -1 with err. */
int model_layers(const config_t *cfg, int classes, layer_spec_t *specs, int max, char *err, size_t errlen);

#endif
