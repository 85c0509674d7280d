# Observability checks (owned by the observability area). `make ci-extra` runs them in CI.
PROMTOOL ?= promtool

.PHONY: promtool dashboards

promtool: system-deps ## check the Prometheus config and alert rules, run the rule unit tests
	$(PROMTOOL) check config grafana/prometheus/prometheus.yml
	$(PROMTOOL) check rules grafana/prometheus/rules/*.yml
	cd grafana/prometheus && $(PROMTOOL) test rules tests/*.yml
	$(PYTHON) grafana/build.py --check

dashboards: ## re-render grafana/dashboards/*.json from grafana/build.py
	$(PYTHON) grafana/build.py

ci-extra:: promtool
