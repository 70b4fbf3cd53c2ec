#!/bin/sh
# turnserver takes its static-auth-secret from a configuration file or its command line; the
# command line is readable by every user of the host (ps), so the secret from TURN_SECRET goes
# into a private copy of the configuration instead. Arguments are passed on to turnserver, and
# so are the words of TURN_EXTRA_ARGS (compose.yaml cannot split one variable into several).
set -eu
if [ -z "${TURN_SECRET:-}" ]; then
  echo "coturn-entrypoint: set TURN_SECRET (the secret shared with Mixdown, MIXDOWN_TURN_SECRET)" >&2
  exit 2
fi
umask 077
conf=$(mktemp /tmp/turnserver.XXXXXX.conf)
cat /etc/coturn/turnserver.conf >"$conf"
printf 'static-auth-secret=%s\n' "$TURN_SECRET" >>"$conf"
unset TURN_SECRET
# shellcheck disable=SC2086 # split on purpose
exec turnserver -c "$conf" "$@" ${TURN_EXTRA_ARGS:-}
