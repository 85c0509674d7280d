#!/bin/sh
# certbot deploy hook, installed by the Ansible certbot role into /etc/letsencrypt/renewal-hooks/deploy/.
# certbot runs it after every certificate it obtains or renews (RENEWED_LINEAGE names the lineage);
# the role also runs it after its first request. nginx re-reads certificates only on reload, and a
# reload with a broken configuration must not happen, so test first.
set -eu
# Certificates may serve other software too; without nginx there is nothing to reload.
command -v nginx >/dev/null 2>&1 || exit 0
if ! nginx -t -q; then
    echo "deploy hook: nginx configuration test failed; not reloading (${RENEWED_LINEAGE:-no lineage})" >&2
    exit 1
fi
if systemctl is-active --quiet nginx; then
    systemctl reload nginx
fi
