# Deployment targets; included by the main Makefile (`include mk/deploy.mk`), or run alone with
# `make -f mk/deploy.mk TARGET`.
#
#   monitor-install  venv + this repository under ~/.local/share/gpu-orchestrator, the user unit,
#                    an env file and config templates (kept if present), daemon-reload
#   monitor-enable   enable and start the user unit now and at every boot of the user manager
#   check-deploy     scripts/check-deploy.sh (compose, systemd units, Dockerfile)
#
# Every path derives from HOME (the unit file says %h, i.e. the same home), so a test can point
# HOME at a scratch directory and replace SYSTEMCTL and DEPLOY_PIP with stubs.

DEPLOY_REPO_ROOT := $(abspath $(dir $(abspath $(lastword $(MAKEFILE_LIST))))..)

DEPLOY_PYTHON ?= python3
SYSTEMCTL ?= systemctl
GPU_ORCH_DATA_DIR ?= $(HOME)/.local/share/gpu-orchestrator
GPU_ORCH_VENV ?= $(GPU_ORCH_DATA_DIR)/venv
DEPLOY_PIP ?= $(GPU_ORCH_VENV)/bin/pip
GPU_ORCH_CONFIG_HOME ?= $(HOME)/.config/gpu-orchestrator
GPU_ORCH_STATE_HOME ?= $(HOME)/.local/state/gpu-orchestrator
SYSTEMD_USER_DIR ?= $(HOME)/.config/systemd/user
GPU_ORCH_UNIT ?= gpu-orchestrator.service

.PHONY: monitor-install monitor-enable check-deploy

monitor-install:
	@test -x "$(GPU_ORCH_VENV)/bin/python" || $(DEPLOY_PYTHON) -m venv "$(GPU_ORCH_VENV)"
	@# Not editable: the service runs what was installed, not whatever the checkout holds later.
	@# --upgrade reinstalls this project on every run (an upgrade), its dependencies only if needed.
	$(DEPLOY_PIP) install --quiet --upgrade "$(DEPLOY_REPO_ROOT)"
	@mkdir -p "$(SYSTEMD_USER_DIR)" "$(GPU_ORCH_CONFIG_HOME)" "$(GPU_ORCH_STATE_HOME)/logs"
	install -m 0644 "$(DEPLOY_REPO_ROOT)/infrastructure/systemd/$(GPU_ORCH_UNIT)" \
		"$(SYSTEMD_USER_DIR)/$(GPU_ORCH_UNIT)"
	@# The env file holds the API token: created once from the template, never overwritten.
	@if [ -e "$(GPU_ORCH_CONFIG_HOME)/env" ]; then \
		echo "kept $(GPU_ORCH_CONFIG_HOME)/env"; \
	else \
		install -m 0600 "$(DEPLOY_REPO_ROOT)/deploy/.env.example" "$(GPU_ORCH_CONFIG_HOME)/env"; \
		echo "created $(GPU_ORCH_CONFIG_HOME)/env: set GPU_ORCH_API_TOKEN and MODEL_STORE_ROOT there"; \
	fi
	@# Manifests and AGENT_MODEL_MAP.json are the operator's once installed: copied only if absent.
	@if [ -e "$(GPU_ORCH_CONFIG_HOME)/config" ]; then \
		echo "kept $(GPU_ORCH_CONFIG_HOME)/config"; \
	else \
		mkdir -p "$(GPU_ORCH_CONFIG_HOME)/config"; \
		cp -R "$(DEPLOY_REPO_ROOT)/config/." "$(GPU_ORCH_CONFIG_HOME)/config/"; \
		echo "created $(GPU_ORCH_CONFIG_HOME)/config"; \
	fi
	install -D -m 0644 "$(DEPLOY_REPO_ROOT)/docs/operations/VLLM_MISTRAL_7B_SETUP.md" \
		"$(GPU_ORCH_DATA_DIR)/docs/VLLM_MISTRAL_7B_SETUP.md"
	$(SYSTEMCTL) --user daemon-reload

monitor-enable:
	$(SYSTEMCTL) --user enable --now $(GPU_ORCH_UNIT)
	@echo "Without lingering, the user manager (the orchestrator and its engines with it) stops at"
	@echo "your last logout. Enable it once: sudo loginctl enable-linger $$(id -un)"
	@echo "Status: systemctl --user status $(GPU_ORCH_UNIT); logs: journalctl --user -u $(GPU_ORCH_UNIT)"

check-deploy:
	bash "$(DEPLOY_REPO_ROOT)/scripts/check-deploy.sh"
