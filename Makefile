# Book targets (the website). Tests live in dev/test.sh; this file only builds the book.
PY ?= .venv/bin/python
SCALE ?= laptop

.PHONY: book book-ci book-clean figures figures-check chapter-times

# Publishing build: executes every chapter at $(SCALE) (cached in _build/.jupyter_cache, so a rebuild only reruns
# changed chapters) and prints how long it took. Site: _build/html/index.html
book: figures
	$(PY) dev/build_book.py --scale $(SCALE)

# CI form: no execution, warnings are errors. Must pass with the chapters as they are.
book-ci:
	$(PY) dev/build_book.py --no-execute --strict --all --out _build/ci

book-clean:
	rm -rf _build

# Static figures, generated from the package (small SVGs, committed).
figures:
	$(PY) figures/make_figures.py

figures-check:
	$(PY) figures/make_figures.py --check

# Time each chapter under nbval and record it in chapters/_timings.json (shown in each chapter's run box).
chapter-times:
	$(PY) dev/chapter_times.py --scale $(SCALE)
