# The two quick-start commands: `make demo` (the main job) and `make test`; both install what
# they need first. BUILD_DIR, JOBS and PYTHON (the interpreter the Python module is built for and
# tested with; Debian's /usr/bin/python3, which sees Debian's PyTorch) may be overridden.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
PYTHON ?= /usr/bin/python3
export PYTHON

.PHONY: all deps build demo test bench fuzz clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE=$(PYTHON)
	cmake --build $(BUILD_DIR) -j $(JOBS)

demo: build
	./$(BUILD_DIR)/memattn demo

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

bench: build
	./$(BUILD_DIR)/memattn bench

# The libFuzzer harnesses (clang, in $(BUILD_DIR)/fuzz), FUZZ_SECONDS each; ctest's fuzz_smoke runs them 35 s each.
FUZZ_SECONDS ?= 300
fuzz: deps
	bash fuzz/run-fuzzers.sh $(FUZZ_SECONDS) $(BUILD_DIR)/fuzz

clean:
	rm -rf $(BUILD_DIR)
