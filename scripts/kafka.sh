# Apache Kafka for ./dev: the jars from Maven Central (kafka/pom.xml) fetched once into
# .local/kafka/<version>/libs and reused offline, one KRaft node (broker and controller in
# one process) per folder, formatted once, awaited with a metadata request, and Kafka's own
# console tools run from the same jars. Sourced by ./dev after stack.sh (uses ROOT, log,
# die, alive, port_open, start_detached, stop_pidfile, apt_install).

# What the broker's JVM gets; `-Xmx` bounds its heap (the RSS is heap plus ~200 MiB).
: "${KAFKA_HEAP_OPTS:=-Xms256m -Xmx512m}"
export KAFKA_HEAP_OPTS

kafka_version() { sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/kafka/pom.xml"; }

kafka_libs_dir() { printf '%s/.local/kafka/%s/libs' "$ROOT" "$(kafka_version)"; }

java_major() {
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1
}

# A JDK (17 or newer; Kafka 4 needs it) and Maven, through apt where missing.
ensure_java() {
  local missing=()
  { command -v java >/dev/null && [ "$(java_major)" -ge 17 ]; } || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  command -v java >/dev/null || die "no java after installing openjdk-17-jre-headless"
  [ "$(java_major)" -ge 17 ] ||
    die "java $(java_major) is on PATH first; Kafka $(kafka_version) needs 17 or newer"
}

# The jars, fetched once; later runs never ask Maven again.
ensure_kafka() {
  ensure_java
  local libs
  libs=$(kafka_libs_dir)
  [ -f "$libs/.complete" ] && return
  log "fetching Apache Kafka $(kafka_version) from Maven Central (once)"
  rm -rf "$libs.partial" && mkdir -p "$libs.partial"
  mvn -q -B -f "$ROOT/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$libs.partial" >"$libs.partial.log" 2>&1 ||
    die "Maven could not fetch Kafka $(kafka_version): see $libs.partial.log"
  touch "$libs.partial/.complete"
  rm -rf "$libs" && mv "$libs.partial" "$libs"
  rm -f "$libs.partial.log"
}

# Runs a Kafka class with the project's jars: kafka_java CLASS ARGS...
kafka_java() {
  local class=$1
  shift
  java ${KAFKA_TOOL_OPTS:-} -Dlog4j2.configurationFile="$ROOT/kafka/log4j2-tools.properties" \
    -cp "$(kafka_libs_dir)/*" "$class" "$@"
}

# kafka_config DIR PORT CONTROLLER_PORT: DIR/server.properties from kafka/broker.properties.
kafka_config() {
  KAFKA_DATA="$1/data" KAFKA_PORT=$2 KAFKA_CONTROLLER_PORT=$3 \
    envsubst '${KAFKA_DATA} ${KAFKA_PORT} ${KAFKA_CONTROLLER_PORT}' \
    <"$ROOT/kafka/broker.properties" >"$1/server.properties"
}

# Formats DIR/data once (a fresh cluster id). A folder formatted for other ports or another
# cluster is the broker's to refuse; its error is then reported by kafka_start.
kafka_format() {
  local dir=$1 id
  [ -f "$dir/data/meta.properties" ] && return
  log "formatting Kafka storage in $dir/data"
  id=$(kafka_java kafka.tools.StorageTool random-uuid 2>"$dir/format.log") ||
    die "kafka-storage random-uuid failed: $(tail -n 1 "$dir/format.log")"
  kafka_java kafka.tools.StorageTool format --standalone -t "$id" -c "$dir/server.properties" \
    >>"$dir/format.log" 2>&1 || die "kafka-storage format failed: $(grep -m1 -iE 'error|exception' "$dir/format.log" || tail -n 1 "$dir/format.log")"
}

# True once the broker answers a metadata request.
kafka_answers() { kcat -b "127.0.0.1:$1" -L -m 2 -t __no_such_topic >/dev/null 2>&1; }

# The line of the broker's log that says why it stopped: the exception and its message
# (say "java.lang.RuntimeException: Error: node ID not found in ..."), else the first error.
kafka_failure() {
  local line
  line=$(grep -m1 -E '^[A-Za-z0-9_.$]+(Exception|Error)(: |$)' "$1" 2>/dev/null) ||
    line=$(grep -m1 -E ' (ERROR|FATAL) ' "$1" 2>/dev/null) ||
    line=$(tail -n 1 "$1")
  printf '%s' "${line:0:300}"
}

# kafka_start DIR PORT CONTROLLER_PORT: the node on 127.0.0.1:PORT, storage in DIR/data.
kafka_start() {
  local dir port=$2 controller=$3 pid started i
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  if alive "$dir/kafka.pid" "kafka.Kafka"; then
    log "Kafka already running (pid $(cat "$dir/kafka.pid"))"
    return
  fi
  ensure_kafka
  port_open 127.0.0.1 "$port" && die "port $port is taken by a process this stack did not start (set the broker's port)"
  port_open 127.0.0.1 "$controller" && die "port $controller (the Kafka controller) is taken by a process this stack did not start"
  kafka_config "$dir" "$port" "$controller"
  kafka_format "$dir"
  log "starting Apache Kafka $(kafka_version) on 127.0.0.1:$port (storage $dir/data)"
  : >"$dir/kafka.log"
  started=$(date +%s%N)
  # shellcheck disable=SC2046 # one JVM option per line of kafka/jvm.options
  start_detached "$dir/kafka.pid" "$dir/kafka.log" java $KAFKA_HEAP_OPTS \
    $(grep -v '^#' "$ROOT/kafka/jvm.options") \
    -Dlog4j2.configurationFile="$ROOT/kafka/log4j2.properties" \
    -cp "$(kafka_libs_dir)/*" kafka.Kafka "$dir/server.properties"
  pid=$(cat "$dir/kafka.pid")
  for ((i = 0; i < 600; i++)); do
    if kafka_answers "$port"; then
      echo $((($(date +%s%N) - started) / 1000000)) >"$dir/startup-ms"
      log "Kafka ready in $(cat "$dir/startup-ms") ms"
      return
    fi
    kill -0 "$pid" 2>/dev/null || die "Kafka did not start: $(kafka_failure "$dir/kafka.log") (log: $dir/kafka.log)"
    sleep 0.1
  done
  stop_pidfile "$dir/kafka.pid" kafka.Kafka 10
  die "Kafka did not answer a metadata request on 127.0.0.1:$port within 60 s (log: $dir/kafka.log)"
}

kafka_stop() { stop_pidfile "$1/kafka.pid" "kafka.Kafka" 30; }

# One line for ./dev status.
kafka_status() {
  local dir=$1 pid rss
  if alive "$dir/kafka.pid" "kafka.Kafka"; then
    pid=$(cat "$dir/kafka.pid")
    rss=$(awk '/^VmRSS/ {printf "%d MiB", $2 / 1024}' "/proc/$pid/status")
    printf '%-18s running (pid %s) Apache Kafka %s, started in %s ms, RSS %s\n' kafka "$pid" \
      "$(kafka_version)" "$(cat "$dir/startup-ms" 2>/dev/null || echo '?')" "$rss"
  else
    printf '%-18s stopped\n' kafka
  fi
}
