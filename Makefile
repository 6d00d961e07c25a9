# The two commands of README.md. Both set up .venv first (idempotent).
.PHONY: setup render test bench

setup:
	bash scripts/setup.sh

# Main job: a batch render of jobs/examples/toy.parquet (8 rows) with the trained toy model (wan_dist/models/TOY.md)
# on a local Ray, into ./outputs/batch (clips, sidecars, results table under _results/).
render: setup
	HF_HUB_OFFLINE=1 RAY_AUTH_MODE=$${RAY_AUTH_MODE:-disabled} RAY_USAGE_STATS_ENABLED=0 .venv/bin/wan-dist batch $(ARGS)

test: setup
	bash scripts/test.sh $(ARGS)

bench: setup
	.venv/bin/python benchmarks/pipeline_vs_diffusers.py $(ARGS)

# Local Ray head for development (cluster/ray-head.sh; env RAY_HEAD_DIR, RAY_DASHBOARD_PORT, ... see cluster/README.md).
# Stops by PID, never `ray stop`.
.PHONY: ray-up ray-down ray-status

ray-up: setup
	bash cluster/ray-head.sh start

ray-down:
	bash cluster/ray-head.sh stop

ray-status:
	bash cluster/ray-head.sh status
