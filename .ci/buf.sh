#!/usr/bin/env bash
# CI for the API contract (issue 21): `buf lint` (proto/buf.yaml: STANDARD with the two AIP-style
# response rules excepted, and the COMMENTS rules) and `buf breaking` of proto/ against proto/ as
# it was in the previous commit (HEAD~1), so that no commit removes, renumbers or retypes what
# clients use.
#
# buf comes from the npm registry (@bufbuild/buf, pinned below; its package ships the binary),
# installed into $WSS_CI_WORK/buf, or a temporary directory removed at exit. Needs node + npm,
# and git for the breaking check: without a previous commit (a clone with no history, or the
# first commit) or without proto/ in it, the breaking check is skipped and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0

scratch=''
cleanup() { [ -z "$scratch" ] || rm -rf "$scratch"; }
trap cleanup EXIT
if [ -n "${WSS_CI_WORK:-}" ]; then
  base=$WSS_CI_WORK
else
  scratch=$(mktemp -d)
  base=$scratch
fi

tools=$base/buf
buf=$tools/node_modules/.bin/buf
if [ ! -x "$buf" ] || [ "$("$buf" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
  echo "buf.sh: installing @bufbuild/buf@$BUF_VERSION from the npm registry into $tools"
  mkdir -p "$tools"
  npm install --prefix "$tools" --no-audit --no-fund --loglevel=error --no-save "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi
echo "buf $("$buf" --version)"

echo "buf lint proto"
"$buf" lint proto
echo "buf lint: no findings"

if ! git rev-parse --verify --quiet 'HEAD~1^{commit}' >/dev/null; then
  echo "buf breaking: skipped (no previous commit in this clone: a shallow clone, or the first commit)"
  exit 0
fi
if [ -z "$(git ls-tree -d HEAD~1 proto)" ]; then
  echo "buf breaking: skipped (HEAD~1 has no proto/)"
  exit 0
fi
# The previous proto/ as files (git archive works in worktrees and clones alike), with the
# current buf.yaml's breaking rules.
previous=$base/buf-previous
rm -rf "$previous" && mkdir -p "$previous"
git archive HEAD~1 proto | tar -x -C "$previous"
echo "buf breaking proto --against HEAD~1:proto ($(git rev-parse --short HEAD~1))"
"$buf" breaking proto --against "$previous/proto"
echo "buf breaking: no breaking change"
