# explaind: the commands a newcomer needs. `make run` serves the bundled models; `make test` runs
# every test. Both fetch ONNX Runtime (pinned, sha256-checked) into ~/.cache/explaind first.

CARGO ?= cargo
BIND ?= 127.0.0.1:8080
VENV ?= $(HOME)/.cache/explaind/venv-models

.PHONY: run test lint onnxruntime models tree-model text-model efficientnet minilm openapi bench

onnxruntime:
	@./scripts/fetch-onnxruntime.sh >/dev/null

run: onnxruntime
	$(CARGO) run --release -- serve --models models --bind $(BIND)

test:
	./scripts/test-setup.sh
	$(CARGO) test --no-fail-fast

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Regenerates the example models and test fixtures (needs Debian's dataset-fashion-mnist).
models:
	test -d /usr/share/datasets/fashion-mnist || apt-get install -y dataset-fashion-mnist
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r scripts/requirements-models.txt
	$(VENV)/bin/python scripts/make_models.py

# Regenerates models/breast-cancer-forest (gradient-boosted trees for TreeSHAP) with the test virtualenv.
tree-model:
	./scripts/test-setup.sh
	$${EXPLAIND_CACHE_DIR:-$$HOME/.cache/explaind}/venv-tests/bin/python scripts/make_tree_model.py

# Regenerates models/movie-reviews (a bag-of-words sentiment model, so `make run` serves text).
text-model:
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r scripts/requirements-models.txt
	$(VENV)/bin/python scripts/make_text_model.py

# Adds a pretrained photo classifier (EfficientNet-Lite0, ImageNet) to models/; 18 MB, not committed.
efficientnet:
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r scripts/requirements-models.txt
	$(VENV)/bin/python scripts/make_efficientnet.py

# Adds a pretrained text classifier (all-MiniLM-L6-v2 with a sentiment head trained on VADER's
# movie-review snippets) to models/; 87 MB, not committed.
minilm:
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r scripts/requirements-models.txt
	$(VENV)/bin/python scripts/make_minilm.py

openapi:
	$(CARGO) run --quiet -- openapi > openapi/openapi.json

bench: onnxruntime
	$(CARGO) bench
