#!/bin/sh
# certbot deploy hook for shunt. Install it as
#   /etc/letsencrypt/renewal-hooks/deploy/shunt      (mode 0755)
# or pass it with `certbot certonly ... --deploy-hook /path/to/it`.
#
# certbot runs it after every successful issue or renewal, with
# RENEWED_LINEAGE=/etc/letsencrypt/live/DOMAIN. It
#   1. lets the group ssl-cert read the private key (certbot writes it
#      root:root 0600); shunt.service runs as User=shunt with
#      SupplementaryGroups=ssl-cert;
#   2. asks shunt to reload: new TLS handshakes get the new certificate,
#      live calls continue on their connections (a restart would drop them).
#
# shunt also watches the certificate directory and reloads on its own; the
# explicit reload covers --no-watch and a change seen before step 1 ran (a
# reload that cannot read the key changes nothing and is retried here).
#
# Environment (for other layouts): SHUNT_KEY_GROUP (default ssl-cert),
# SHUNT_RELOAD (default `systemctl reload shunt`; e.g. `docker kill -s HUP shunt`).
set -eu

group=${SHUNT_KEY_GROUP:-ssl-cert}
lineage=${RENEWED_LINEAGE:?RENEWED_LINEAGE is not set (certbot sets it to /etc/letsencrypt/live/DOMAIN)}
live=$(dirname "$lineage")                     # /etc/letsencrypt/live
archive_root=$(dirname "$live")/archive        # /etc/letsencrypt/archive
archive=$archive_root/$(basename "$lineage")   # where live/DOMAIN/*.pem point

# The directories on the way to the key: traversable by the group.
for dir in "$live" "$lineage" "$archive_root" "$archive"; do
    chgrp "$group" "$dir"
    chmod 0750 "$dir"
done
# Every key of the lineage (certbot keeps the old ones as privkeyN.pem).
for key in "$archive"/privkey*.pem; do
    chgrp "$group" "$key"
    chmod 0640 "$key"
done

${SHUNT_RELOAD:-systemctl reload shunt}
