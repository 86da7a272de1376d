/* cmp-params A B [TOL]: compares two parameter files (raw float32, as
 * ddp-train's [log] params writes them). Prints the largest difference
 * relative to the largest magnitude in B; exits 0 when it is <= TOL
 * (default 0: bitwise equal), 1 when not, 2 on bad input. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *load(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    const long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *p = malloc((size_t)bytes + 4);
    if (p && fread(p, 1, (size_t)bytes, f) != (size_t)bytes) free(p), p = NULL;
    fclose(f);
    *n = bytes / (long)sizeof(float);
    return p;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: cmp-params A B [TOL]\n");
        return 2;
    }
    const double tol = argc > 3 ? atof(argv[3]) : 0.0;
    long na, nb;
    float *a = load(argv[1], &na), *b = load(argv[2], &nb);
    if (!a || !b || na != nb || na == 0) {
        fprintf(stderr, "cmp-params: cannot compare %s (%ld floats) with %s (%ld floats)\n", argv[1], a ? na : -1L,
                argv[2], b ? nb : -1L);
        return 2;
    }
    double maxdiff = 0, maxmag = 0;
    long at = 0, differ = 0;
    for (long i = 0; i < na; i++) {
        const double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= maxdiff)) maxdiff = d, at = i; /* NaN counts as a difference */
        if (memcmp(&a[i], &b[i], sizeof(float))) differ++;
        maxmag = fmax(maxmag, fabs((double)b[i]));
    }
    const double rel = maxmag > 0 ? maxdiff / maxmag : maxdiff;
    printf("cmp-params: %ld floats, %ld differ, max difference %.3g at %ld (relative to max |B| %.3g: %.3g, tolerance %g)\n",
           na, differ, maxdiff, at, maxmag, rel, tol);
    return (tol == 0 ? differ == 0 : rel <= tol) ? 0 : 1;
}
