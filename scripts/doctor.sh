#!/usr/bin/env bash
# Lists every tool the README's two commands (scripts/demo.sh, scripts/test.sh) run: where
# it was found, or that it is missing and what installs it. Installs nothing; those two
# scripts install what is missing themselves (Debian/Ubuntu, as root or with sudo).
# Exits 1 when something is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

missing=0
printf '%-16s %-9s %-7s %s\n' tool needed-by status "where / what installs it"
for row in "${TOOL_TABLE[@]}"; do
  IFS='|' read -r name probe _ provider needed <<<"$row"
  if found=$("$probe" 2>/dev/null); then
    printf '%-16s %-9s %-7s %s\n' "$name" "${needed// /,}" ok "$(echo "$found" | tr '\n' ' ')"
  else
    missing=1
    printf '%-16s %-9s %-7s %s\n' "$name" "${needed// /,}" MISSING "$provider"
  fi
done
if [ "$missing" = 1 ]; then
  echo "Missing tools are installed by the script that needs them (scripts/test.sh, scripts/demo.sh)." >&2
  exit 1
fi
