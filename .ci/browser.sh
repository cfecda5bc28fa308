# Shared by .ci/run: the status page's browser test (tests/status_page.rs, ignored in
# ./run-tests) needs headless Chromium and chromedriver. Installed with apt-get when missing and
# running as root; otherwise it says what to install. The screenshot goes to $WSS_CI_ARTIFACTS
# (default target/artifacts), whose path the test prints.

ensure_chromium() {
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "chromium or chromedriver is missing: installing them with apt-get" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    return 0
  fi
  echo "chromium and chromedriver are missing. Install them first:" >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y chromium chromium-driver" >&2
  return 1
}

status_page_test() {
  ensure_chromium
  WSS_CI_ARTIFACTS=${WSS_CI_ARTIFACTS:-$PWD/target/artifacts} ./run-tests --locked --test status_page -- --ignored --nocapture
}
