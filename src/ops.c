#include "ops.h"

#include <stddef.h>

const op_impl_t *ops_impl(device_t dev, op_kind_t kind) {
    static const op_impl_t *const table[DEV_COUNT] = {[DEV_CPU] = ops_cpu};
    if ((unsigned)dev >= DEV_COUNT || (unsigned)kind >= OP_COUNT || !table[dev]) return NULL;
    return &table[dev][kind];
}
