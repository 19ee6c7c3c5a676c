# ferry — see README.md. Every target runs from a fresh clone with Go and make.

GO ?= go

.PHONY: build test soak demo bench bench-s3 bench-trees bench-fsync bench-hash profile restart-read lint fuzz units man

build:
	$(GO) build -trimpath -o bin/ ./cmd/...

test:
	$(GO) test -race -count=1 ./...

# Long forms of issue 5's suites: the kill -9 matrices on a 1 GiB upload
# killed 50 times each (~2 min here; FERRY_KILL_SEED=N repeats a logged
# run) and the long power-loss sweep.
soak:
	FERRY_SOAK=1 $(GO) test -race -count=1 -timeout 30m -v -run '^TestKillMatrix' ./integration/
	$(GO) test -race -count=1 -timeout 30m -run 'PowerLossSweep$$' ./daemon/ -args -crash.long

# Sends a 256 MiB file (or FILE=path) through a throttling proxy, kills
# ferryd halfway, restarts it, and checks the sender resumed to a
# bit-identical file.
demo: build
	$(GO) run ./demo -ferry bin/ferry -ferryd bin/ferryd $(if $(FILE),-file $(FILE))

# Throughput, first chunk and memory against a raw TCP copy and rsync (issue 4),
# and scp when OpenSSH's client and server are installed, each size in two
# memory states, settled and fresh (issue 10; bench/doc.go);
# writes bench/results.json. Quick run:
#   make bench BENCHFLAGS='-sizes 100M -rounds 1 -sparse 0 -concurrent 0'
bench: build
	$(GO) build -trimpath -o bin/ferrybench ./bench
	bin/ferrybench -bin bin -out bench/results.json $(BENCHFLAGS)

# Directory trees of issue 9 against rsync -a and rsync -a --fsync (bench/doc.go):
# 20,000 files of 4 KiB, Go's src tree, a re-send, 500 files over 50 ms more
# round trip, and peak RSS for 1,000,000 empty files; ~25 min with 3 rounds,
# so not part of `make bench`. Both file system states (bench/doc.go): clean
# (-tree-keep: no run starts within a minute of the benchmark deleting
# files) into bench/results-trees-clean.json, then churned (each run right
# after the last run's copy is deleted; small and gosrc) into
# bench/results-trees-churned.json. Quick run:
#   make bench-trees BENCHFLAGS='-rounds 1 -trees small,resend -tree-files 2000'
bench-trees: build
	$(GO) build -trimpath -o bin/ferrybench ./bench
	bin/ferrybench -bin bin -out bench/results-trees-clean.json -sizes '' -sparse 0 -concurrent 0 -trees all -tree-keep $(BENCHFLAGS)
	bin/ferrybench -bin bin -out bench/results-trees-churned.json -sizes '' -sparse 0 -concurrent 0 -trees small,gosrc $(BENCHFLAGS)

# fsync strategies for group commit (issue 9): sequential, parallel,
# sync_file_range + fsync, syncfs, fdatasync, on 100, 1000 and 5000 files
# of 4 KiB; writes bench/fsync.json. E.g. FSYNCFLAGS='-n 1000 -reps 1'.
bench-fsync:
	$(GO) build -trimpath -o bin/ferrybench ./bench
	bin/ferrybench fsync $(FSYNCFLAGS)

# Hash-only benchmarks of issue 10 on a 256 MiB buffer (FERRY_HASH_BENCH_MIB=1024
# for 1 GiB): two zeebo/blake3 passes against one chunk-tree pass, chunk
# sizes, and the parallel hasher at GOMAXPROCS 1, 2 and 4; each with
# internal/b3x's kernel (b3x-avx512) and with guts alone, where the CPU
# has them.
bench-hash:
	$(GO) test -run='^$$' -bench='^Benchmark(HashPasses|ChunkSizes)$$' -cpu 1 ./transfer/
	$(GO) test -run='^$$' -bench='^BenchmarkHashParallel$$' -cpu 1,2,4 ./transfer/

# S3 of issue 13: 1 GiB through ferryd into versitygw on loopback against a
# direct multipart upload with minio-go in the same part size, ferryd's peak
# RSS, and the bytes resent after a daemon kill; needs versitygw (on PATH or
# in ~/go/bin). Runs in both memory states (bench/doc.go): settled into
# bench/results-s3.json (with the kill), fresh into bench/results-s3-fresh.json.
# E.g. S3FLAGS='-size 256M -rounds 1'.
bench-s3: build
	$(GO) build -trimpath -o bin/ferrybench ./bench
	bin/ferrybench s3 -memory settled $(S3FLAGS)
	bin/ferrybench s3 -memory fresh -kill=false -out bench/results-s3-fresh.json $(S3FLAGS)

# What a restarted ferryd reads to resume a 16 GiB sparse partial (issue 10;
# RESTART_SIZE=4G for a shorter run): /proc/PID/io of ferryd.
restart-read: build
	$(GO) build -trimpath -o bin/ferrybench ./bench
	bin/ferrybench -restart -restart-size $(or $(RESTART_SIZE),16G) $(BENCHFLAGS)

# CPU profile of one in-process 1 GiB transfer (sender and daemon together).
profile:
	$(GO) build -trimpath -o bin/ferrybench ./bench
	bin/ferrybench -profile $(BENCHFLAGS)
	$(GO) tool pprof -top -nodecount=20 bin/ferrybench bench/out/cpu.prof

# golangci-lint v2 with .golangci.yml (STYLE.md section 7), pinned and
# installed into bin/ on first use, so a fresh clone needs only Go and make.
# go vet stays as well: it runs every analyzer of this Go release.
GOLANGCI_LINT_VERSION = v2.15.0
GOLANGCI_LINT = bin/golangci-lint-$(GOLANGCI_LINT_VERSION)/golangci-lint

$(GOLANGCI_LINT):
	GOBIN=$(CURDIR)/$(dir $@) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run ./...
	$(GO) vet ./...

# Rewrites the man pages (docs/man/ferry.1, docs/man/ferryd.8) and the
# bash and zsh completions (dist/completion/) from the CLI definitions;
# TestDocsCurrent, part of make test, fails when they are out of date.
man:
	$(GO) test -count=1 -run '^TestDocsCurrent$$' ./cmd/ferry/ ./cmd/ferryd/ -args -update

# systemd-analyze verify of dist/ferryd.service and dist/ferryd.socket, and
# the service's security exposure (at most 1.6); skipped without
# systemd-analyze. See .ci/verify-units.
units: build
	.ci/verify-units

# Runs each fuzz target for FUZZTIME (one target per go test run is all Go
# allows). The committed seed corpora also run in every `make test`.
# Minimisation is capped so that new inputs do not stall the run.
FUZZTIME ?= 30s
FUZZFLAGS = -run='^$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=200x
fuzz:
	$(GO) test $(FUZZFLAGS) -fuzz='^FuzzReadFrameHeader$$' ./transfer/
	$(GO) test $(FUZZFLAGS) -fuzz='^FuzzDecodeMessage$$' ./transfer/
	$(GO) test $(FUZZFLAGS) -fuzz='^FuzzDecodeChunk$$' ./transfer/
	$(GO) test $(FUZZFLAGS) -fuzz='^FuzzValidateName$$' ./transfer/
	$(GO) test $(FUZZFLAGS) -fuzz='^FuzzDecodeMergeStack$$' ./transfer/
	$(GO) test $(FUZZFLAGS) -fuzz='^FuzzSubtreeB3X$$' ./transfer/
	$(GO) test $(FUZZFLAGS) -fuzz='^FuzzDecodeState$$' ./daemon/
	$(GO) test $(FUZZFLAGS) -fuzz='^FuzzParseTokens$$' ./daemon/auth/
	$(GO) test $(FUZZFLAGS) -fuzz='^FuzzParseKnownHosts$$' ./internal/knownhosts/
