/* The few CUDA runtime calls the test programs need for GPU buffers
 * (coll-bench -G, test_coll -G), loaded at run time so that their CPU runs
 * never touch CUDA and they build without its headers. cudaError_t and
 * cudaMemcpyKind are int-sized enums; 4 is cudaMemcpyDefault. */
#ifndef TESTS_CUDART_SHIM_H
#define TESTS_CUDART_SHIM_H

#include <dlfcn.h>
#include <mpi.h>
#include <stdio.h>

static struct {
    int (*Malloc)(void **, size_t);
    int (*Free)(void *);
    int (*Memcpy)(void *, const void *, size_t, int);
    int (*SetDevice)(int);
    int (*GetDeviceCount)(int *);
    const char *(*GetErrorString)(int);
} cu;
#define CU_DEFAULT 4

static void cudart_fail(const char *prog, int rank, const char *what, int e) {
    fprintf(stderr, "%s: rank %d: -G: %s: %s (CUDA error %d)\n", prog, rank, what,
            cu.GetErrorString ? cu.GetErrorString(e) : "", e);
    MPI_Abort(MPI_COMM_WORLD, 2);
}

/* Loads the runtime and picks this rank's GPU (its index on the node modulo
 * the GPUs present); any failure ends the job with status 2. */
static void cudart_load(const char *prog, int rank) {
    void *h = dlopen("libcudart.so.13", RTLD_NOW | RTLD_GLOBAL);
    if (!h) h = dlopen("libcudart.so", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        fprintf(stderr, "%s: rank %d: -G: cannot load the CUDA runtime: %s\n", prog, rank, dlerror());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    *(void **)&cu.Malloc = dlsym(h, "cudaMalloc");
    *(void **)&cu.Free = dlsym(h, "cudaFree");
    *(void **)&cu.Memcpy = dlsym(h, "cudaMemcpy");
    *(void **)&cu.SetDevice = dlsym(h, "cudaSetDevice");
    *(void **)&cu.GetDeviceCount = dlsym(h, "cudaGetDeviceCount");
    *(void **)&cu.GetErrorString = dlsym(h, "cudaGetErrorString");
    if (!cu.Malloc || !cu.Free || !cu.Memcpy || !cu.SetDevice || !cu.GetDeviceCount || !cu.GetErrorString) {
        fprintf(stderr, "%s: rank %d: -G: the CUDA runtime lacks a function\n", prog, rank);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    int n = 0, e = cu.GetDeviceCount(&n);
    if (e) cudart_fail(prog, rank, "cudaGetDeviceCount", e);
    if (n < 1) cudart_fail(prog, rank, "no CUDA device", 100);
    MPI_Comm node;
    int local = 0;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
    if ((e = cu.SetDevice(local % n))) cudart_fail(prog, rank, "cudaSetDevice", e);
}

#endif
