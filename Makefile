.PHONY: run test setup bench

# Install everything, then start the app on http://127.0.0.1:8501
run:
	scripts/setup.sh
	.venv/bin/python -m streamlit run app/main.py --server.address 127.0.0.1

# Install everything (test tools and chromium included), then run the whole test suite
test:
	scripts/setup.sh --test
	.venv/bin/lint-imports
	.venv/bin/python -m pytest

setup:
	scripts/setup.sh --test

bench:
	.venv/bin/python benchmarks/engine_overhead.py
