# Conveniences; the scripts are the real entry points.
.PHONY: demo demo-keep test crds chart-snapshots
demo:            ## the local demo stack (README's first command)
	scripts/demo.sh
demo-keep:       ## the demo, left running
	scripts/demo.sh --keep
test:            ## every test (what CI runs)
	scripts/test.sh
crds:            ## regenerate crds/ and the chart's copy
	scripts/gen-crds.sh
chart-snapshots: ## regenerate helm template snapshots and the configuration reference
	UPDATE_GOLDEN=1 cargo test --workspace --test helm --test docs
