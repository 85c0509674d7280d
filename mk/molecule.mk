# Ansible appliance (issue 4): `make ansible-lint` and `make molecule`. See docs/deploy.md.
#
# Molecule runs every scenario in ansible/molecule/ (default = site.yml end to end, plus one per role)
# and any ansible/roles/<role>/molecule/<scenario>/, each in a systemd-nspawn container booted from a
# Debian 12 rootfs built once into .molecule-cache/ (gitignored). No Docker; the host's firewall is
# never touched (ufw runs only inside a private-network container). Run as root.
#
#   make molecule                              all scenarios (~15 min on 2 cores, first run +3 min rootfs;
#                                              scale_out, five containers, adds ~4 min, 7-10 when busy)
#   make molecule MOLECULE_SCENARIOS="nginx"   some of ansible/molecule/<name>
#   make molecule-destroy                      stop whatever a failed run left behind

OPS_STAMP := $(VENV)/.ops-stamp
OPS_APT_PACKAGES := debootstrap systemd-container pebble certbot nginx iproute2 curl openssl git
# Empty: every scenario under ansible/molecule plus the roles' own.
MOLECULE_SCENARIOS ?=
# Hard bound on the whole suite (CI has 90 minutes for everything).
MOLECULE_TIMEOUT ?= 2400
MOLECULE_ENV = PATH="$(abspath $(BIN)):$$PATH" ANSIBLE_FORCE_COLOR=0 NO_COLOR=1 \
	MOLECULE_ROOTFS_CACHE="$(abspath .molecule-cache)"

.PHONY: ops-deps ansible-lint ansible-decisions molecule molecule-destroy

ops-deps: deps $(OPS_STAMP)
	@missing=$$(for p in $(OPS_APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(OPS_STAMP): pyproject.toml $(PIP_STAMP)
	$(BIN)/pip install -q -e '.[ops]'
	touch $@

ansible-lint: ops-deps ## lint the playbooks, roles and Molecule scenarios (production profile)
	cd ansible && $(MOLECULE_ENV) ansible-lint
	cd ansible && $(MOLECULE_ENV) ansible-playbook --syntax-check -i inventories/gcp/hosts.yml site.yml

# `make test` has no Ansible installed, so these tests skip there; here they run with it.
ansible-decisions: ops-deps ## the app role's scale-out decisions and preflight messages, by Ansible's templating
	$(BIN)/pytest -q -p no:cacheprovider tests/test_ansible_roles.py

# One commit for the whole run (MSSQL_MCP_REVISION): the app role deploys it, so commits landing
# meanwhile cannot make the idempotence step see a "new release".
molecule: ops-deps ansible-lint ansible-decisions ## converge, idempotence and verify every role in nspawn containers
	@set -e; rev=$$(git rev-parse HEAD); start=$$(date +%s); \
	scenarios="$(MOLECULE_SCENARIOS)"; \
	if [ -z "$$scenarios" ]; then scenarios=$$(cd ansible/molecule && ls -d */ | tr -d / | grep -vx shared); fi; \
	for s in $$scenarios; do \
		echo "=== molecule scenario $$s"; \
		(cd ansible && MSSQL_MCP_REVISION=$$rev $(MOLECULE_ENV) timeout -k 30 $(MOLECULE_TIMEOUT) \
			molecule test -s $$s) || { (cd ansible && $(MOLECULE_ENV) molecule destroy -s $$s) || true; exit 1; }; \
		echo "=== $$s passed after $$(( $$(date +%s) - start )) s"; \
	done; \
	if [ -z "$(MOLECULE_SCENARIOS)" ]; then \
		for f in ansible/roles/*/molecule/*/molecule.yml; do \
			[ -f "$$f" ] || continue; role=$${f#ansible/roles/}; role=$${role%%/*}; s=$$(basename $$(dirname $$f)); \
			echo "=== molecule scenario $$s of role $$role"; \
			(cd ansible/roles/$$role && MSSQL_MCP_REVISION=$$rev $(MOLECULE_ENV) timeout -k 30 $(MOLECULE_TIMEOUT) \
				molecule test -s $$s) || { (cd ansible/roles/$$role && $(MOLECULE_ENV) molecule destroy -s $$s) || true; exit 1; }; \
		done; \
	fi; \
	echo "=== molecule: all scenarios passed in $$(( $$(date +%s) - start )) s"

molecule-destroy: ## stop the containers and pebble a failed or interrupted run left behind
	-cd ansible && for s in $$(cd molecule && ls -d */ | tr -d / | grep -vx shared); do \
		$(MOLECULE_ENV) molecule destroy -s $$s; done

ci-extra:: molecule
