# memvisor. `make help` lists the targets.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/memvisor/memvisor/internal/version.Version=$(VERSION)
# grpcnotrace leaves gRPC's debug tracing (and html/template) out of the
# binaries: the supervisor is 2.7 MB smaller, and so is its RSS.
TAGS     := grpcnotrace
BIN      := $(CURDIR)/bin
# Benchmarks measure inside each function and run it once; see internal/benchfmt.
BENCH    ?= .
BENCH_PKGS ?= ./...
PREFIX   ?= /usr/local

export MEMVISOR_BIN := $(BIN)

.PHONY: all build test bench demo faults lint proto install clean help

all: build

help:
	@echo "make build    build bin/supervisor and bin/runner"
	@echo "make demo     run the main job on the embedded synthetic source"
	@echo "make test     run every test (race detector, real subprocesses)"
	@echo "make bench    print BENCH <name> <value> <unit> lines"
	@echo "make faults   run the fault-injection scenarios in examples/"
	@echo "make lint     gofmt, go vet, staticcheck"
	@echo "make proto    regenerate plugin/proto (needs protoc)"
	@echo "make install  install the binaries and the systemd unit"

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -tags $(TAGS) -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

test: build
	$(GO) test -race -count=1 -timeout 20m ./...

# Each benchmark prints BENCH lines as it goes; keep the last line per name.
bench: build
	@$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime 1x -count 1 -timeout 90m $(BENCH_PKGS) \
		| tee $(BIN)/bench.log \
		| awk '/^BENCH /{ if (!($$2 in seen)) order[++n]=$$2; seen[$$2]=$$0 } \
		       END { for (i=1;i<=n;i++) print seen[order[i]] }'

demo: build
	@bash examples/demo/run

faults: build
	@bash examples/faults

lint:
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

proto:
	protoc --plugin=protoc-gen-go="$$($(GO) tool -n protoc-gen-go)" \
	       --plugin=protoc-gen-go-grpc="$$($(GO) tool -n protoc-gen-go-grpc)" \
	       --go_out=. --go_opt=paths=source_relative \
	       --go-grpc_out=. --go-grpc_opt=paths=source_relative \
	       plugin/proto/runner.proto

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/memvisor
	install -m 0755 $(BIN)/supervisor $(BIN)/runner $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 deploy/systemd/memvisor.service $(DESTDIR)/etc/systemd/system/
# The config holds no secret, and the unit's DynamicUser must read it.
	test -e $(DESTDIR)/etc/memvisor/config.yaml || install -m 0644 deploy/config.yaml $(DESTDIR)/etc/memvisor/config.yaml
# The token stays root-only: the unit passes it with LoadCredential=.
	test -e $(DESTDIR)/etc/memvisor/api-token || (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > $(DESTDIR)/etc/memvisor/api-token)

clean:
	rm -rf $(BIN) state .demo .faults
