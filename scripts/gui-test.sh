#!/usr/bin/env bash
# Unit tests of the web GUI (vitest): the client, the request builders, the poller, state, i18n.
set -euo pipefail
here="$(dirname "$0")"
"$here/gui-build.sh" --deps-only
cd "$here/../gui"
npx vitest run "$@"
