# One entry point: make, make test, make run, make bench, make install.
# make SAN=1 builds with AddressSanitizer and UBSan into build-san/,
# make SAN=thread with ThreadSanitizer into build-tsan/.
# make CUDA=1 / CUDA=0 forces the GPU parts on or off; by default they are
# built when nvcc is found (docs/GPU.md). CUDA_GENCODE adds architectures.

PREFIX ?= /usr/local
CC := mpicc
SAN ?= 0
BUILD := $(if $(filter 1,$(SAN)),build-san,$(if $(filter thread,$(SAN)),build-tsan,build))

# -fopenmp-simd: `#pragma omp simd reduction` vectorises float sums (no threads, no libgomp)
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -O3 -g -Wall -Wextra -Werror -fopenmp-simd -Iinclude -MMD -MP
ifeq ($(SAN),1)
CFLAGS_BASE += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS_SAN := -fsanitize=address,undefined
endif
ifeq ($(SAN),thread)
CFLAGS_BASE += -fsanitize=thread -fno-omit-frame-pointer
LDFLAGS_SAN := -fsanitize=thread
endif
CFLAGS ?=
CFLAGS := $(CFLAGS_BASE) $(CFLAGS)
LDLIBS := -lpthread -lm -ldl

# ---- CUDA: sm_90 machine code plus PTX, so newer GPUs JIT-compile it ----
NVCC ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
CUDA ?= $(if $(NVCC),1,0)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_GENCODE ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCCFLAGS := -O3 -std=c++17 $(CUDA_GENCODE) -Iinclude -Isrc -Xcompiler -fPIC,-Wall,-Wextra,-Werror -MMD -MP
ifeq ($(CUDA),1)
CFLAGS += -DHAVE_CUDA=1 -I$(CUDA_HOME)/include
# the runtime's CUDA column is a plugin loaded by device = cuda (src/device_cuda.h)
CUDA_PLUGIN := $(BUILD)/lib/libddp_cuda.so
CU_OBJ := $(patsubst %.cu,$(BUILD)/obj/%.o,$(wildcard src/*.cu))
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Xlinker -rpath,$(CUDA_HOME)/lib64 -lcudnn -lcublas -cudart shared
endif

LIB_SRC := $(wildcard collectives/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
LIB_A := $(BUILD)/lib/libcoll.a
LIB_SO := $(BUILD)/lib/libcoll.so

# the training runtime: every src/*.c but the program's main
RT_SRC := $(filter-out src/main.c,$(wildcard src/*.c))
RT_OBJ := $(RT_SRC:%.c=$(BUILD)/obj/%.o)
RT_LIBS := -lopenblas -lz -linih
TRAIN := $(BUILD)/bin/ddp-train

BENCH := $(BUILD)/bin/coll-bench $(BUILD)/bin/gemm-floor $(BUILD)/bin/tcp-rtt $(BUILD)/bin/shm-limit $(BUILD)/bin/core-rtt
TEST_BINS := $(BUILD)/tests/soak $(BUILD)/tests/ddp-train-faults $(BUILD)/tests/test_gpu_ops $(BUILD)/tests/test_reduce $(BUILD)/tests/test_api $(BUILD)/tests/test_coll \
	$(BUILD)/tests/test_graph $(BUILD)/tests/test_data $(BUILD)/tests/test_config $(BUILD)/tests/test_compress $(BUILD)/tests/test_ddp_compress $(BUILD)/tests/test_straggler $(BUILD)/tests/trace_scenarios $(BUILD)/tests/cmp-params

.PHONY: all deps test run bench install clean fuzz fuzz-build soak
all: $(LIB_A) $(LIB_SO) $(TRAIN) $(BENCH) $(TEST_BINS) $(CUDA_PLUGIN)

deps:
	@launch/install-deps

# objects depend on the flags they were built with (CUDA on or off, say)
FLAGS_STAMP := $(BUILD)/.flags
$(shell mkdir -p $(BUILD); echo '$(CFLAGS) $(NVCCFLAGS)' | cmp -s - $(FLAGS_STAMP) || echo '$(CFLAGS) $(NVCCFLAGS)' > $(FLAGS_STAMP))

$(BUILD)/obj/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -c $< -o $@

$(BUILD)/obj/%.o: %.cu $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(CUDA_PLUGIN): $(CU_OBJ)
	@mkdir -p $(dir $@)
	$(NVCC) -shared $(CUDA_GENCODE) -o $@ $^ $(CUDA_LIBS)

$(LIB_A): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(LIB_SO): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared -Wl,-soname,libcoll.so.0 $(LDFLAGS_SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/bin/coll-bench: $(BUILD)/obj/tests/bench/coll_bench.o $(BUILD)/obj/tests/bench/bench_args.o $(BUILD)/obj/tests/bench/limit.o $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/bin/gemm-floor: $(BUILD)/obj/tests/bench/gemm_floor.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ -lopenblas $(LDLIBS)

$(BUILD)/bin/tcp-rtt: $(BUILD)/obj/tests/bench/tcp_rtt.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/bin/shm-limit: $(BUILD)/obj/tests/bench/shm_limit.o $(BUILD)/obj/tests/bench/limit.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/bin/core-rtt: $(BUILD)/obj/tests/bench/core_rtt.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(LDLIBS)

$(TRAIN): $(BUILD)/obj/src/main.o $(RT_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(RT_LIBS) $(LDLIBS)

# ddp-train with fault injection (src/faults.h): the test build only
FAULT_OBJ := $(BUILD)/obj-faults/src/main.o $(BUILD)/obj-faults/src/train.o $(BUILD)/obj-faults/src/observe.o $(BUILD)/obj-faults/src/checkpoint.o \
             $(BUILD)/obj-faults/tests/e2e/faults.o
$(BUILD)/obj-faults/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Isrc -DDDP_FAULT_HOOKS -fPIC -c $< -o $@
$(BUILD)/tests/ddp-train-faults: $(filter-out %/train.o %/observe.o %/checkpoint.o,$(RT_OBJ)) $(FAULT_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(RT_LIBS) $(LDLIBS)

$(BUILD)/tests/cmp-params: $(BUILD)/obj/tests/e2e/cmp_params.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(LDLIBS)

# test_graph counts heap allocations during training steps
$(BUILD)/tests/test_graph: LDFLAGS_WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign

# runtime unit tests see src/ headers
$(BUILD)/obj/tests/unit/test_%.o $(BUILD)/obj/tests/gpu/test_%.o $(BUILD)/obj/tests/mpi/test_ddp_%.o: CFLAGS += -Isrc

# the data-parallel engine at several ranks (compression against serial references)
$(BUILD)/tests/test_ddp_compress: $(BUILD)/obj/tests/mpi/test_ddp_compress.o $(RT_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(RT_LIBS) $(LDLIBS)

# GPU against CPU (tests/gpu/run); built everywhere, skips without a GPU
$(BUILD)/tests/test_gpu_ops: $(BUILD)/obj/tests/gpu/test_gpu_ops.o $(RT_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(RT_LIBS) $(LDLIBS)

$(BUILD)/tests/test_graph $(BUILD)/tests/test_data $(BUILD)/tests/test_config $(BUILD)/tests/test_compress $(BUILD)/tests/test_straggler: $(BUILD)/tests/test_%: $(BUILD)/obj/tests/unit/test_%.o $(RT_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) $(LDFLAGS_WRAP) -o $@ $^ -lcmocka $(RT_LIBS) $(LDLIBS)

$(BUILD)/tests/test_reduce: $(BUILD)/obj/tests/unit/test_reduce.o $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ -lcmocka $(LDLIBS)

$(BUILD)/tests/test_api: $(BUILD)/obj/tests/unit/test_api.o $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ -lcmocka $(LDLIBS)

$(BUILD)/tests/soak: $(BUILD)/obj/tests/soak/soak.o $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/trace_scenarios: $(BUILD)/obj/tests/mpi/trace_scenarios.o $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/test_coll: $(BUILD)/obj/tests/mpi/test_coll.o $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(LDLIBS)

# ---- fuzzing (tests/fuzz): libFuzzer with ASan and UBSan, our sources rebuilt by clang ----
FUZZ_DIR := build-fuzz
FUZZ_CC ?= $(or $(shell command -v clang-14 2>/dev/null),clang)
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -fopenmp-simd -Wno-pass-failed -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-Iinclude -Isrc -Itests/bench $(shell mpicc --showme:compile 2>/dev/null)
FUZZERS := config layers idx ckpt bench_args
FUZZ_BIN := $(FUZZERS:%=$(FUZZ_DIR)/fuzz_%)
FUZZ_SECONDS ?= 60
$(FUZZ_DIR)/fuzz_config: tests/fuzz/fuzz_config.c src/config.c src/model.c src/layers.c
$(FUZZ_DIR)/fuzz_layers: tests/fuzz/fuzz_layers.c src/layers.c src/graph.c src/ops.c src/ops_cpu.c src/ops_conv.c src/ops_seq.c src/tensor.c src/device.c
$(FUZZ_DIR)/fuzz_idx: tests/fuzz/fuzz_idx.c src/data.c
$(FUZZ_DIR)/fuzz_ckpt: tests/fuzz/fuzz_ckpt.c src/checkpoint.c src/paths.c
$(FUZZ_DIR)/fuzz_bench_args: tests/fuzz/fuzz_bench_args.c tests/bench/bench_args.c $(LIB_A)
$(FUZZ_BIN):
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $(filter %.c %.a,$^) -linih -lz -lopenblas $(shell mpicc --showme:link 2>/dev/null) -lpthread -lm -ldl
fuzz-build: $(FUZZ_BIN)
# make fuzz FUZZ_SECONDS=N: every harness for N seconds (results in build-fuzz/fuzz.log)
fuzz: deps
	@$(MAKE) --no-print-directory $(LIB_A) fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run long

# make soak SOAK_N=N [SOAK_SEED=S]: the differential soak, N calls at each of 2-5 ranks
SOAK_N ?= 100000
SOAK_SEED ?= $(shell date +%s)
soak: deps
	@$(MAKE) --no-print-directory all
	@for np in 2 3 4 5; do OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
		mpirun --oversubscribe --bind-to none -np $$np $(BUILD)/tests/soak -n $(SOAK_N) -s $(SOAK_SEED) || exit 1; done

# Installs missing Debian packages first, then builds and runs every suite;
# the last line is "N passed, N failed".
SAN_UNIT := test_reduce test_api test_graph test_data test_config test_compress test_ddp_compress test_straggler test_coll
test: deps
	@$(MAKE) --no-print-directory all fuzz-build
	@$(MAKE) --no-print-directory SAN=1 $(SAN_UNIT:%=build-san/tests/%) build-san/bin/ddp-train
	@$(MAKE) --no-print-directory SAN=thread build-tsan/tests/test_coll build-tsan/tests/ddp-train-faults
	@BUILD=$(BUILD) tests/run-tests

# The default job: the Fashion-MNIST MLP on 2 ranks.
run: deps
	@$(MAKE) --no-print-directory all
	DDP_TRAIN=$(TRAIN) launch/ddprun -np 2 -- configs/fmnist-mlp.ini

bench: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) tests/bench/compare-native
	@BUILD=$(BUILD) tests/bench/train-vs-pytorch
	@BUILD=$(BUILD) tests/bench/gpt-vs-pytorch
	@BUILD=$(BUILD) tests/bench/ddp-scaling
	@if tests/e2e/vcluster.sh --probe; then BUILD=$(BUILD) tests/bench/vcluster-bench 1gbit 2; \
	else echo "vcluster-bench: skipped (network namespaces need root)"; fi
	@BUILD=$(BUILD) tests/bench/compress-bench
	@BUILD=$(BUILD) tests/bench/shm-bench
	@if tests/e2e/vcluster.sh --probe; then BUILD=$(BUILD) tests/bench/hier-bench 1gbit 10gbit; \
	else echo "hier-bench: skipped (network namespaces need root)"; fi
	@if tests/e2e/vcluster.sh --probe; then BUILD=$(BUILD) tests/bench/predict-validate; \
	else echo "predict-validate: skipped (network namespaces need root)"; fi

install: $(LIB_A) $(LIB_SO)
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 include/coll.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(LIB_A) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(LIB_SO) $(DESTDIR)$(PREFIX)/lib/libcoll.so.0
	ln -sf libcoll.so.0 $(DESTDIR)$(PREFIX)/lib/libcoll.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|0.1|' collectives/coll.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/coll.pc

clean:
	rm -rf build build-san build-tsan build-fuzz

-include $(shell find $(BUILD)/obj $(BUILD)/obj-faults -name '*.d' 2>/dev/null)
