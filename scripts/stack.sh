# Functions behind ./dev: install what is missing, run a private Postgres cluster, the
# services and the nginx gateway (the broker: scripts/kafka.sh), each recorded by a pid file under .local/ so
# that `./dev down` stops exactly what was started and nothing else.
# Sourced by ./dev; expects ROOT to be the repository root.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'dev: %s\n' "$*" >&2; exit 1; }

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"

is_root() { [ "$(id -u)" = 0 ]; }

# --- installation -------------------------------------------------------------------

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && printf '%s' "$dir"
}

nginx_bin() {
  command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && printf '/usr/sbin/nginx'; }
}

# Installs Debian packages without starting their services: the postgresql package would
# otherwise create and start a cluster on port 5432, and nginx would take port 80.
apt_install() {
  local sudo=""
  is_root || sudo="sudo"
  log "installing Debian packages: $*"
  $sudo mkdir -p /etc/postgresql-common
  [ -f /etc/postgresql-common/createcluster.conf ] ||
    echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
  local policy=/usr/sbin/policy-rc.d created_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    created_policy=1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  [ -z "$created_policy" ] || $sudo rm -f "$policy"
}

ensure_packages() {
  local missing=()
  pg_bin >/dev/null || missing+=(postgresql)
  nginx_bin >/dev/null || missing+=(nginx)
  command -v curl >/dev/null || missing+=(curl)
  command -v envsubst >/dev/null || missing+=(gettext-base)
  command -v kcat >/dev/null || missing+=(kcat)
  # OpenSSL's headers: librdkafka, Postgres and webhook TLS are built against them.
  [ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  # Prometheus and promtool, for the tests of the alerting rules in prometheus/.
  command -v promtool >/dev/null || missing+=(prometheus)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  # Debian's prometheus package enables a system-wide server on :9090; we only want the
  # binaries.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  pg_bin >/dev/null || die "the postgresql package installed no initdb under /usr/lib/postgresql"
  nginx_bin >/dev/null || die "nginx is not installed"
}

ensure_tools() {
  ensure_packages
  ensure_kafka
  ensure_node_tools
}

chromium_bin() {
  command -v chromium 2>/dev/null
}

# The browser the browser tests drive through playwright-core: Debian's chromium.
ensure_chromium() {
  chromium_bin >/dev/null || apt_install chromium
}

# From npm, pinned by package-lock.json into node_modules/: swagger-ui-dist, which the
# gateway serves at /docs, and playwright-core, which drives chromium in the browser tests.
# Install scripts are not run (none is needed; swagger-ui-dist's would send analytics).
ensure_node_tools() {
  command -v npm >/dev/null || apt_install nodejs npm
  # Vite 7 needs 20.19 or newer (playwright-core 20).
  node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null ||
    die "Node.js $(node --version 2>/dev/null || echo '(none)') is too old: 20.19 or newer is needed (Vite)"
  local stamp="$ROOT/node_modules/.installed-lock" want
  want=$(sha256sum <"$ROOT/package-lock.json")
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing the npm packages of package-lock.json into node_modules/"
    (cd "$ROOT" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null) ||
      die "npm ci failed"
    printf '%s' "$want" >"$stamp"
  fi
  build_console_page
}

# The console's page (web-console/web, TypeScript): type-checked by tsc and bundled by
# Vite into its dist/, which the gateway serves at /console/. Built again when a source
# file or the npm lock changed (their hash is kept in .local/, not among the served files).
build_console_page() {
  local web="$ROOT/web-console/web" stamp="$ROOT/.local/console-page.sources" want
  want=$(cd "$ROOT" && find web-console/web/index.html web-console/web/vite.config.ts \
    web-console/web/tsconfig.json web-console/web/src package-lock.json -type f -print0 |
    sort -z | xargs -0 sha256sum | sha256sum)
  [ -f "$web/dist/index.html" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  log "building the console's page (tsc, vite)"
  mkdir -p "$ROOT/.local"
  (cd "$ROOT" && npm run --silent console:build >"$ROOT/.local/console-build.log" 2>&1) || {
    tail -20 "$ROOT/.local/console-build.log" >&2
    die "the console's page did not build"
  }
  printf '%s' "$want" >"$stamp"
}

# The folder of the built console page.
console_page_dir() {
  printf '%s' "$ROOT/web-console/web/dist"
}

# The folder of swagger-ui-dist's files that the gateway serves under /docs/swagger-ui/.
swagger_ui_dir() {
  printf '%s' "$ROOT/node_modules/swagger-ui-dist"
}

# The Python side of the tests, in its own virtual environment under .local/python: the
# Standard Webhooks reference library (PyPI), which verifies our webhook signatures, and
# openapi-spec-validator, which validates the gateway's OpenAPI document, and schemathesis,
# which sends generated requests through the gateway and checks the answers against it.
STANDARDWEBHOOKS_PY_VERSION=1.3.0
OPENAPI_SPEC_VALIDATOR_VERSION=0.7.2
SCHEMATHESIS_VERSION=4.32.5
ensure_python_tools() {
  local venv="$ROOT/.local/python"
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  pip_pinned "$venv" standardwebhooks "$STANDARDWEBHOOKS_PY_VERSION"
  pip_pinned "$venv" openapi-spec-validator "$OPENAPI_SPEC_VALIDATOR_VERSION"
  pip_pinned "$venv" schemathesis "$SCHEMATHESIS_VERSION"
}

# Installs PyPI package $2 at version $3 into the virtual environment $1 unless it is there.
pip_pinned() {
  local venv=$1 package=$2 version=$3
  if [ "$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$package'))" 2>/dev/null)" != "$version" ]; then
    log "installing $package $version from PyPI into $venv"
    "$venv/bin/pip" install -q "$package==$version" || die "pip could not install $package $version"
  fi
}

# cargo-fuzz (from crates.io), which drives libFuzzer; a C++ compiler builds libFuzzer.
CARGO_FUZZ_VERSION=0.13.2
ensure_cargo_fuzz() {
  command -v g++ >/dev/null || apt_install g++
  if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" -q
  fi
}

# --- processes ------------------------------------------------------------------------

# True when the pid in $1 is running and its command line contains $2.
alive() {
  local pidfile=$1 name=$2 pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"
}

# Stops the process recorded in $1 (if it is still $2): SIGTERM, then SIGKILL after $3 s.
stop_pidfile() {
  local pidfile=$1 name=$2 grace=${3:-20} pid i
  if alive "$pidfile" "$name"; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop within ${grace}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name"
  fi
  rm -f "$pidfile"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
  local host=$1 port=$2 seconds=$3 what=$4 i
  for ((i = 0; i < seconds * 5; i++)); do
    port_open "$host" "$port" && return 0
    sleep 0.2
  done
  die "$what did not open $host:$port within ${seconds}s"
}

# Starts "$@" detached, logging to $2 and recording its pid in $1.
start_detached() {
  local pidfile=$1 logfile=$2
  shift 2
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
  setsid nohup "$@" >>"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

# --- Postgres -------------------------------------------------------------------------

as_postgres() {
  if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The postgres user must be able to reach the data folder; grant traverse (o+x) on any
# ancestor that blocks it (for example a checkout under /root).
pg_make_reachable() {
  is_root || return 0
  local dir
  dir=$(cd "$1" && pwd)
  while [ "$dir" != "/" ]; do
    if ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
      log "granting traverse permission on $dir so that the postgres user can reach its data"
      chmod o+x "$dir"
    fi
    dir=$(dirname "$dir")
  done
}

pg_running() {
  as_postgres "$(pg_bin)/pg_ctl" status -D "$1/data" >/dev/null 2>&1
}

# pg_start DIR PORT: a private cluster in DIR listening on 127.0.0.1:PORT, with a
# superuser shop/shop and a database shop.
pg_start() {
  local dir=$1 port=$2 bin
  bin=$(pg_bin)
  mkdir -p "$dir"
  pg_make_reachable "$dir"
  if pg_running "$dir"; then
    log "Postgres already running in $dir"
  else
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      log "initdb into $dir/data"
      is_root && chown postgres: "$dir"
      printf 'shop\n' >"$dir/pwfile"
      is_root && chown postgres: "$dir/pwfile"
      as_postgres "$bin/initdb" -D "$dir/data" -U shop --pwfile="$dir/pwfile" -E UTF8 \
        --no-locale --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 ||
        die "initdb failed; see $dir/initdb.log"
      rm -f "$dir/pwfile"
    fi
    log "starting Postgres on 127.0.0.1:$port"
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories='$dir' -c max_connections=300" \
      start >/dev/null || die "Postgres did not start; see $dir/postgres.log"
  fi
  PGPASSWORD=shop "$bin/psql" -h 127.0.0.1 -p "$port" -U shop -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'shop'" | grep -q 1 ||
    PGPASSWORD=shop "$bin/psql" -h 127.0.0.1 -p "$port" -U shop -d postgres -qc "CREATE DATABASE shop"
}

pg_stop() {
  local dir=$1
  if [ -f "$dir/data/PG_VERSION" ] && pg_running "$dir"; then
    as_postgres "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    log "stopped Postgres in $dir"
  fi
}
