# Taskflow: every command a developer or CI needs. `make help` lists them.

SHELL := /bin/bash
VENV := .venv
FUZZ_VENV := .venv-fuzz
DEPLOY_VENV := .venv-deploy
MAX_EXAMPLES ?= 10
# LocalStack's host runtime (make test-localstack): a venv of its own, made with Python 3.13.
LOCALSTACK_VENV := .venv-localstack
PYTHON ?= python3
PORT ?= 3000
EMULATOR_PORT ?= 5050
AGENCY ?= acme
# USER is also the login name in the environment; only a command-line USER= counts here.
ifneq ($(origin USER),command line)
USER := alice
endif
ROLE ?= manager
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: functions browser node-modules screenshots invoke redrive upload mutants bench soak package fuzz help venv venv-localstack build dev token test test-unit test-integration test-localstack lint fmt fmt-check clippy sam-validate clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: infra/local/requirements.txt
	@echo "==> Installing the local emulator (moto) and SAM tools into $(VENV) (about a minute on a fresh machine)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/local/requirements.txt
	touch $@

venv: $(VENV)/.installed ## Install the pinned Python tools (moto, aws-sam-cli, cfn-lint) into .venv

# schemathesis has its own venv: its pins would fight aws-sam-cli's.
$(FUZZ_VENV)/.installed: infra/local/fuzz-requirements.txt
	@echo "==> Installing schemathesis into $(FUZZ_VENV)"
	$(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/local/fuzz-requirements.txt
	touch $@

# cargo-lambda and the Zig it cross-compiles with come prebuilt from PyPI.
$(DEPLOY_VENV)/.installed: infra/deploy-requirements.txt
	@echo "==> Installing cargo-lambda (with Zig) into $(DEPLOY_VENV)"
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/deploy-requirements.txt
	touch $@

package: venv $(DEPLOY_VENV)/.installed ## Build every function for provided.al2023 on arm64 with sam build (release; ~10 min on 2 cores)
	PATH="$(CURDIR)/$(DEPLOY_VENV)/bin:$(CURDIR)/$(VENV)/bin:$$PATH" SAM_CLI_TELEMETRY=0 sam build --beta-features --template template.yaml
	bash infra/package-check.sh

bench: venv ## Benchmarks against the local stack and a BullMQ peer; writes bench/results/latest.{json,md} (QUICK=1: about 3 minutes plus the release build; SCENARIOS=scale: the scale scenario alone, about 2; SCENARIOS=fairness: the fair-share scenario and the peer's alone, about 13, bench/results/fairness.{json,md}; SCENARIOS=coldstart: the release binaries' cold starts alone, seconds, printed as JSON)
	@command -v redis-server >/dev/null || { echo "==> Installing redis-server (Debian)"; (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null; }
	@test -d bench/peer/node_modules || { echo "==> Installing the BullMQ peer (npm ci)"; cd bench/peer && npm ci --silent --no-audit --no-fund; }
	$(CARGO) build --release --quiet -p api -p worker -p sweeper -p batch-trigger -p schedule-runner -p event-publisher -p bench
	$(CARGO) build --release --quiet -p local-stack --bin lambda-fixture
	QUICK=$(QUICK) ./target/release/taskflow-bench

soak: venv ## Ten minutes of steady load (SOAK_SECONDS, SOAK_RATE per second): 0 lost, 0 duplicated
	MOTO_VENV=$(CURDIR)/$(VENV) SOAK_SECONDS=$(or $(SOAK_SECONDS),600) SOAK_RATE=$(or $(SOAK_RATE),5) \
		$(CARGO) test -p integration-tests -- --ignored --nocapture soak

# Every check, positive and negative (CHECKS=all), on the phases whose requests are the same
# every run (examples, coverage, fuzzing): what make test gates on. The stateful phase follows
# links through the ids each run creates, so what it reaches varies from run to run: fuzz-all.
FUZZ_CHECKS ?= all
fuzz: venv $(FUZZ_VENV)/.installed ## Fuzz the API from its OpenAPI document with every schemathesis check, positive and negative, on the repeatable phases (MAX_EXAMPLES per operation, default 10; FUZZ_CHECKS=default for the five server-side checks)
	CHECKS=$(subst default,,$(FUZZ_CHECKS)) PHASES=examples,coverage,fuzzing MAX_EXAMPLES=$(MAX_EXAMPLES) bash infra/local/fuzz.sh

.PHONY: fuzz-all
fuzz-all: venv $(FUZZ_VENV)/.installed ## make fuzz plus the stateful phase (sequences of calls through the ids the API returns)
	CHECKS=all MAX_EXAMPLES=$(MAX_EXAMPLES) bash infra/local/fuzz.sh

$(LOCALSTACK_VENV)/.installed: infra/localstack/requirements.txt infra/localstack/venv.sh
	bash infra/localstack/venv.sh $(LOCALSTACK_VENV)
	touch $@

venv-localstack: $(LOCALSTACK_VENV)/.installed ## Install LocalStack's host runtime (Python 3.13, pinned) into .venv-localstack

# Mutation testing (not part of `make test`): cargo-mutants, pinned, over the worker path's decision
# code, judged by the unit tests of shared and worker (.cargo/mutants.toml). Its own target dir keeps
# mutated builds away from everyone else's; one job, since a mutant build wants both cores.
MUTANTS_VERSION := 27.1.0
MUTANTS_FILES ?= shared/src/service/runner.rs shared/src/service/batch_runner/chunk.rs shared/src/service/batch_runner/finalize.rs shared/src/service/chains/mod.rs shared/src/service/chains/step.rs shared/src/service/chains/settle.rs shared/src/service/chains/segment.rs functions/worker/src/lib.rs
MUTANTS_OUT ?= mutants
MUTANTS_JOBS ?= 1

mutants: ## Mutation testing of the runner, batch runner, chains and worker (cargo-mutants; hours on 2 cores; MUTANTS_FILES=… to narrow); output in mutants/
	@$(CARGO) mutants --version 2>/dev/null | grep -qx 'cargo-mutants $(MUTANTS_VERSION)' \
		|| $(CARGO) install cargo-mutants --locked --version $(MUTANTS_VERSION)
	mkdir -p $(MUTANTS_OUT)
	CARGO_TARGET_DIR=$(CURDIR)/target/mutants $(CARGO) mutants --jobs $(MUTANTS_JOBS) --output $(MUTANTS_OUT) \
		$(foreach f,$(MUTANTS_FILES),--file $(f)); \
		status=$$?; \
		for outcome in caught missed timeout unviable; do \
			printf '%-9s %s\n' $$outcome "$$(wc -l < $(MUTANTS_OUT)/mutants.out/$$outcome.txt 2>/dev/null || echo 0)"; \
		done; \
		exit $$status

# The functions' own binaries, which the local Lambda runtime runs (make dev, the end-to-end tests).
FUNCTION_CRATES := -p api -p worker -p sweeper -p batch-trigger -p schedule-runner -p event-publisher
functions:
	@echo "==> Building the function binaries (debug; a first build takes 2-4 minutes)"
	@$(CARGO) build $(FUNCTION_CRATES)

build: ## Build every crate (debug)
	$(CARGO) build --workspace --all-targets

dev: venv functions ## Run the whole system locally: emulator, resources from template.yaml, each function's binary under the local Lambda runtime, API on :$(PORT)
	$(CARGO) run --quiet -p local-stack -- dev --port $(PORT) --emulator-port $(EMULATOR_PORT)

FUNCTION ?=
EVENT ?=
TIER ?= normal
redrive: ## Move a tier's dead letters back to its queue on the running make dev stack (TIER=normal); AWS: aws sqs start-message-move-task
	$(CARGO) run --quiet -p local-stack -- redrive --tier $(TIER)

invoke: functions ## One invocation of a function's binary against the running make dev stack: make invoke FUNCTION=ApiFunction EVENT=events/api-openapi.json
	@test -n "$(FUNCTION)" -a -n "$(EVENT)" || { echo "usage: make invoke FUNCTION=<LogicalId> EVENT=events/<file>.json"; exit 2; }
	@$(CARGO) run --quiet -p local-stack -- invoke --function $(FUNCTION) --event $(EVENT)

upload: ## Put a file under uploads/<AGENCY>/ in the running make dev stack's batch bucket, which makes it a batch: make upload AGENCY=acme FILE=orders.jsonl META="priority=high items-per-batch=50"
	@test -n "$(FILE)" || { echo 'usage: make upload AGENCY=acme FILE=<.json|.jsonl|.csv file> [META="name=value ..."]'; exit 2; }
	@$(CARGO) run --quiet -p local-stack -- upload --agency $(AGENCY) --file $(FILE) $(foreach m,$(META),--meta $(m))

token: ## Print a local bearer token: make token AGENCY=acme USER=alice ROLE=manager
	@$(CARGO) run --quiet -p local-stack -- token --agency $(AGENCY) --user $(USER) --role $(ROLE)

test: venv fmt-check clippy test-unit test-integration fuzz sam-validate ## Everything CI runs
	@echo "==> make test: all checks passed"

test-unit: ## Unit and handler tests (no emulator)
	$(CARGO) test --workspace --exclude integration-tests

# The console's browser test (tests/integration/console.rs) drives Debian's Chromium, never a
# downloaded browser: apt installs it when it is missing (as root on CI, else through sudo).
browser: ## Install Debian's chromium for the console's browser test when /usr/bin/chromium is missing
	@test -x /usr/bin/chromium || { echo "==> Installing chromium (Debian; about a minute)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium) >/dev/null; }

# playwright-core and axe-core, pinned in package-lock.json (playwright-core downloads nothing).
node_modules/.package-lock.json: package.json package-lock.json
	@echo "==> Installing the browser test's Node packages (npm ci)"
	npm ci --silent --no-audit --no-fund --ignore-scripts
	@touch $@

node-modules: node_modules/.package-lock.json

screenshots: venv functions browser node-modules ## Regenerate docs/screenshots/*.png from the console's browser test
	@$(CARGO) build --quiet -p local-stack --bin local-stack
	SCREENSHOTS=1 MOTO_VENV=$(CURDIR)/$(VENV) $(CARGO) test -p integration-tests console -- --nocapture

# The end-to-end run builds every binary it starts (the functions, and local-stack, which the README
# test's `make token` runs) in the same cargo feature set as the unit tests: whole workspace, dev
# units on. Selecting packages with -p would resolve features afresh (tokio without test-util, ...)
# and rebuild tokio, hyper and the SDK crates a second time (about a minute of a CI run). Those
# extra features only add APIs no binary calls (tokio's paused clock, shared::testing's fakes).
test-integration: venv browser node-modules ## End-to-end tests over HTTP against a local stack the tests start themselves (functions as processes under the local Lambda runtime)
	@echo "==> Building the function binaries and local-stack (the unit tests' feature set)"
	@$(CARGO) build --quiet --workspace --exclude integration-tests --bins --tests
	MOTO_VENV=$(CURDIR)/$(VENV) $(CARGO) test --workspace --test integration -- --test-threads 4

# LOCALSTACK_ENDPOINT=http://localhost:4566 uses a running LocalStack (Docker) instead of starting one.
test-localstack: venv functions $(if $(LOCALSTACK_ENDPOINT),,venv-localstack) ## The end-to-end tests with SQS, Step Functions and S3 on LocalStack (host process), DynamoDB on moto
	rm -rf .local/localstack
	@$(CARGO) build --quiet -p local-stack --bin local-stack
	TASKFLOW_TEST_BACKEND=localstack MOTO_VENV=$(CURDIR)/$(VENV) LOCALSTACK_VENV=$(CURDIR)/$(LOCALSTACK_VENV) \
		$(CARGO) test -p integration-tests -- --test-threads 4; \
		status=$$?; rm -rf .local/localstack; exit $$status

sam-validate: venv ## sam validate --lint and cfn-lint on template.yaml (offline)
	SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 $(VENV)/bin/sam validate --lint --template template.yaml
	$(VENV)/bin/cfn-lint template.yaml

lint: fmt-check clippy sam-validate ## Formatting, clippy and template lint

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean: ## Remove build output and the venv
	$(CARGO) clean
	rm -rf $(VENV) $(LOCALSTACK_VENV) .local
