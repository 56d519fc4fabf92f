# Benchmarks: run the sections of docs/benchmarks and write BENCHMARKS.md from what they
# print. Sourced by ./dev after stack.sh (uses ROOT, LOCAL, log, die, pg_bin).
#
# Each docs/benchmarks/NN-name.md is one section: a "## " title line, a
# "<!-- command: ... -->" line (the command that prints the figures), then the text that
# says what is measured and against which raw baseline. The figures come from the
# command's stdout, verbatim: markdown table lines as they are, other lines in a text block.

BENCH_SECTIONS="$ROOT/docs/benchmarks"

bench_command() { sed -n 's/^<!-- command: \(.*\) -->$/\1/p' "$1"; }

bench_name() { basename "$1" .md | sed 's/^[0-9]*-//'; }

# What the figures were measured on.
bench_machine() {
  local rdkafka cpu memory os
  rdkafka=$(awk '/^name = "rdkafka-sys"/ {getline; gsub(/"/, "", $3); print $3}' "$ROOT/Cargo.lock")
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  memory=$(awk '/^MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
  os=$(. /etc/os-release && printf '%s' "$PRETTY_NAME")
  printf -- '- cores: %s (%s)\n' "$(nproc)" "${cpu:-unknown CPU}"
  printf -- '- memory: %s GiB\n' "$memory"
  printf -- '- system: %s, Linux %s\n' "$os" "$(uname -r)"
  printf -- '- compiler: %s; builds: `cargo bench` / `--release`\n' "$(rustc -V)"
  printf -- '- Kafka client: rdkafka-sys %s (librdkafka %s, built from source)\n' \
    "${rdkafka%%+*}" "${rdkafka#*+}"
  printf -- '- broker: Apache Kafka %s (KRaft, one combined broker and controller, from Maven Central), %s, OpenJDK %s\n' \
    "$(kafka_version)" "heap ${KAFKA_HEAP_OPTS}" "$(java_major)"
  printf -- '- database: %s, a private cluster with default settings\n' \
    "$("$(pg_bin)/postgres" --version)"
}

# A bench's stdout as markdown: table lines verbatim, runs of other lines in a text block;
# a blank line ends a table (two tables in a row stay two tables).
bench_figures() {
  awk '
    /^\|/ { if (text) { print "```"; print ""; text = 0 } ; print; table = 1; next }
    /^[[:space:]]*$/ { if (table) { print ""; table = 0 } ; next }
    { if (table) { print ""; table = 0 } ; if (!text) { print "```text"; text = 1 } ; print }
    END { if (text) print "```" }
  ' "$1"
}

# bench_run SECTION OUT: runs the section's command, its stdout into OUT (and the terminal).
bench_run() {
  local section=$1 out=$2 command
  command=$(bench_command "$section")
  [ -n "$command" ] || die "$section has no <!-- command: ... --> line"
  log "$(bench_name "$section"): $command"
  (cd "$ROOT" && bash -o pipefail -c "$command" | tee "$out") ||
    die "$(bench_name "$section") failed; BENCHMARKS.md is left as it was"
}

bench_write_report() {
  local dir=$1 target=$2 section tmp
  tmp="$target.new"
  {
    printf '# Benchmarks\n\n'
    printf 'Written by `./dev bench` from its run that started %s. Every figure below\n' \
      "$(cat "$dir/started")"
    printf 'was printed in that run by the command named in its section, next to its raw\n'
    printf 'baseline measured in the same run on the same broker (raw rdkafka produce, a raw\n'
    printf 'consumer, raw Postgres COPY). Do not edit by hand: change docs/benchmarks/ or the\n'
    printf 'benches, and run `./dev bench`. Findings and experiments of earlier runs:\n'
    printf 'docs/benchmark-history.md.\n\n'
    printf '## Machine\n\n'
    bench_machine
    for section in "$BENCH_SECTIONS"/*.md; do
      printf '\n'
      head -1 "$section"
      printf '\n`%s`\n' "$(bench_command "$section")"
      tail -n +3 "$section"
      printf '\n'
      bench_figures "$dir/$(bench_name "$section").out"
    done
  } >"$tmp"
  mv "$tmp" "$target"
}

# bench_section NAME: the section file of the benchmark NAME, or a one-line error.
bench_section() {
  local found names=() s
  [[ $1 =~ ^[a-z0-9-]+$ ]] && found=$(ls "$BENCH_SECTIONS"/[0-9]*-"$1".md 2>/dev/null) &&
    { printf '%s\n' "$found"; return; }
  for s in "$BENCH_SECTIONS"/*.md; do names+=("$(bench_name "$s")"); done
  die "no benchmark named $1 (have: ${names[*]})"
}

# bench_all [NAME...]: every section (and BENCHMARKS.md rewritten), or only the named ones
# (printed; BENCHMARKS.md untouched). Check the names with bench_section first.
bench_all() {
  local dir="$LOCAL/bench" section name
  mkdir -p "$dir"
  if [ $# -gt 0 ]; then
    for name in "$@"; do
      bench_run "$(bench_section "$name")" "$dir/$name.out"
    done
    return
  fi
  date -u '+%Y-%m-%d %H:%M UTC' >"$dir/started"
  for section in "$BENCH_SECTIONS"/*.md; do
    bench_run "$section" "$dir/$(bench_name "$section").out"
  done
  bench_write_report "$dir" "$ROOT/BENCHMARKS.md"
  log "BENCHMARKS.md rewritten"
}
