/* libFuzzer: the INI config parser with command-line overrides, then the
 * checks across keys and the model built from them. Input: INI text, then
 * (after a NUL byte) overrides, one "section.key=value" per line. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
    static config_t c;
    static FILE *null;
    if (!null) null = fopen("/dev/null", "w");
    const uint8_t *z = memchr(d, 0, n);
    const size_t ini = z ? (size_t)(z - d) : n;
    char *text = malloc(ini + 1);
    memcpy(text, d, ini);
    text[ini] = '\n'; /* fmemopen needs a non-empty buffer */
    char err[2048];
    config_defaults(&c);
    FILE *f = fmemopen(text, ini + 1, "r");
    int rc = config_load_file(&c, f, "fuzz.ini", err, sizeof err);
    fclose(f);
    free(text);
    if (z) {
        const char *p = (const char *)z + 1, *end = (const char *)d + n;
        while (!rc && p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
            char *arg = strndup(p, len); /* stops at a NUL inside, as argv would */
            rc = config_override(&c, arg, err, sizeof err);
            free(arg);
            p += len + 1;
        }
    }
    if (!rc) rc = config_validate(&c, err, sizeof err);
    if (!rc) {
        config_write(&c, null, 0);
        layer_spec_t specs[LAYERS_MAX];
        model_layers(&c, 10, specs, LAYERS_MAX, err, sizeof err);
    }
    return 0;
}
