#!/bin/sh
# Installs test/node's npm dependencies into test/node/node_modules with `npm ci`,
# exactly as package-lock.json pins them, and only when package-lock.json changed
# since the last install (its hash is kept in node_modules/.palisade-lock-sha256).
# test/e2e/node_test.go runs this before the Node.js scenarios.
set -eu

cd "$(dirname "$0")"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "install.sh: $tool is not on PATH; the Node.js end-to-end tests need Node.js >= 18 and npm" >&2
    exit 1
  fi
done

if command -v sha256sum >/dev/null 2>&1; then
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
else
  want=$(shasum -a 256 package-lock.json | cut -d' ' -f1)
fi
stamp=node_modules/.palisade-lock-sha256

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "install.sh: package-lock.json changed or not installed; running npm ci in $(pwd)" >&2
# --ignore-scripts: none of these packages needs an install script to work.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
echo "$want" > "$stamp"
