# The console's screenshot in docs/ (docs/console.md shows it); included by the main Makefile.
#
#   console-screenshot  a busy node (simulated GPUs, the fake engine standing in for vLLM) in
#                       Debian's Chromium, written to docs/console.png; installs Chromium first
#                       where it is missing (the main Makefile's test-deps). The console tests
#                       take the same picture, so a change to the page that breaks it fails
#                       `make test`.

CONSOLE_SCREENSHOT ?= docs/console.png

.PHONY: console-screenshot

console-screenshot: venv test-deps
	$(BIN)/python -m tests.console.screenshot $(CONSOLE_SCREENSHOT)
