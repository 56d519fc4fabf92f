#!/usr/bin/env bash
# Builds kcat against a current librdkafka, into .local/kcat/bin/kcat, so that the README's
# kcat recipes can be tried on the local tansu broker. Debian's kcat 1.7.1 is linked to
# librdkafka 2.0.2, which cannot even connect to tansu 0.6.0 (ApiVersions parse error);
# librdkafka 2.x as the rdkafka crate vendors it can.
#
#   scripts/kcat.sh            build once (a few minutes on 2 cores); prints the binary's path
#
# Sources, from package registries only:
#   - librdkafka: the tree vendored by the rdkafka-sys crate (crates.io), the same version
#     the services link (cargo fetches it with the workspace's dependencies);
#   - kcat: Debian's kafkacat source package (orig tarball), its sha256 checked against
#     the package's .dsc.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/.local/kcat"
BUILD="$PREFIX/build"
KCAT="$PREFIX/bin/kcat"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'kcat.sh: %s\n' "$*" >&2; exit 1; }

if [ -x "$KCAT" ] && "$KCAT" -V >/dev/null 2>&1; then
  echo "$KCAT"
  exit 0
fi
for tool in curl make gcc pkg-config sha256sum apt-get; do
  command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install build-essential pkg-config curl)"
done
mkdir -p "$BUILD"

# librdkafka, from the rdkafka-sys crate the workspace depends on.
cargo fetch --manifest-path "$ROOT/Cargo.toml" --locked -q
version=$(cargo metadata --manifest-path "$ROOT/Cargo.toml" --format-version 1 --locked |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "rdkafka-sys"))')
crate=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"rdkafka-sys-$version" 2>/dev/null | head -n 1)
[ -n "$crate" ] && [ -d "$crate/librdkafka" ] || die "rdkafka-sys $version not found in the cargo registry"
if [ ! -f "$PREFIX/lib/librdkafka.a" ]; then
  log "building librdkafka ${version#*+} from $crate"
  rm -rf "$BUILD/librdkafka"
  cp -r "$crate/librdkafka" "$BUILD/librdkafka"
  (cd "$BUILD/librdkafka" &&
    ./configure --prefix="$PREFIX" --disable-ssl --disable-gssapi --disable-curl \
      --disable-zstd --disable-lz4-ext >"$BUILD/librdkafka-configure.log" 2>&1 &&
    make -j"$(nproc)" -C src >"$BUILD/librdkafka-make.log" 2>&1 &&
    make -C src install >>"$BUILD/librdkafka-make.log" 2>&1) ||
    die "librdkafka did not build; see $BUILD/librdkafka-*.log"
fi

# kcat's source, from Debian's source package (a deb-src list of our own, not the system's).
apt_dir="$BUILD/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
echo "deb-src http://deb.debian.org/debian bookworm main" >"$apt_dir/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "APT::Sandbox::User=root")
log "fetching Debian's kafkacat source package"
apt-get "${apt_opts[@]}" update -qq
uris=$(apt-get "${apt_opts[@]}" source --print-uris kcat 2>/dev/null)
dsc_uri=$(printf '%s\n' "$uris" | grep -o "'[^']*\.dsc'" | tr -d "'" | head -n 1)
orig_uri=$(printf '%s\n' "$uris" | grep -o "'[^']*\.orig\.tar\.gz'" | tr -d "'" | head -n 1)
[ -n "$dsc_uri" ] && [ -n "$orig_uri" ] || die "no kcat source package in Debian bookworm"
curl -fsSL "$dsc_uri" -o "$BUILD/kcat.dsc"
curl -fsSL "$orig_uri" -o "$BUILD/kcat.orig.tar.gz"
expected=$(grep -A3 '^Checksums-Sha256:' "$BUILD/kcat.dsc" | grep '\.orig\.tar\.gz$' | awk '{print $1}')
actual=$(sha256sum "$BUILD/kcat.orig.tar.gz" | awk '{print $1}')
[ -n "$expected" ] && [ "$expected" = "$actual" ] || die "kcat source checksum mismatch ($actual, .dsc says $expected)"

log "building kcat against it"
rm -rf "$BUILD/kcat" && mkdir -p "$BUILD/kcat"
tar -xzf "$BUILD/kcat.orig.tar.gz" -C "$BUILD/kcat" --strip-components=1
(cd "$BUILD/kcat" &&
  PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" CPPFLAGS="-I$PREFIX/include" LDFLAGS="-L$PREFIX/lib" \
    ./configure --prefix="$PREFIX" --enable-static >"$BUILD/kcat-configure.log" 2>&1 &&
  make -j"$(nproc)" >"$BUILD/kcat-make.log" 2>&1 &&
  make install >>"$BUILD/kcat-make.log" 2>&1) ||
  die "kcat did not build; see $BUILD/kcat-*.log"
"$KCAT" -V >/dev/null || die "the built kcat does not run"
echo "$KCAT"
