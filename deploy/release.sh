#!/usr/bin/env bash
# Build the release archives of tunnel: one per OS and architecture, each
# with the binary, README.md, SECURITY.md, docs/deploy.md and the example
# configuration of `tunnel start` (tunnels.example.yaml), and on Linux also
# the systemd units and the example relay config; plus SHA256SUMS.
#
#   deploy/release.sh [VERSION [OUTDIR]]
#
# VERSION defaults to `git describe --tags --always --dirty`, OUTDIR to
# deploy/dist. The binaries are static (CGO_ENABLED=0), built with -trimpath
# and stamped with VERSION (tunnel version prints it): the same go build as
# deploy/Dockerfile's. TARGETS (default: linux, darwin and windows on amd64
# and arm64, as GOOS/GOARCH words) picks other ones; JOBS (default: the
# number of CPUs) how many build at once.
#
# Archives are tar.gz, zip for Windows, named tunnel_VERSION_OS_ARCH and
# reproducible: their times are SOURCE_DATE_EPOCH (default: the last
# commit's time). Needs go, GNU tar, gzip, zip and sha256sum. Check a
# download with: sha256sum --ignore-missing -c SHA256SUMS
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=${1:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)}
out=${2:-$root/deploy/dist}
targets=${TARGETS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64}

if [[ ! $version =~ ^[0-9A-Za-z][0-9A-Za-z._+-]*$ ]]; then
	echo "release.sh: version $version: use letters, digits and . _ + - only, e.g. v1.2.3" >&2
	exit 2
fi
for tool in go tar gzip zip sha256sum; do
	if ! command -v "$tool" >/dev/null; then
		echo "release.sh: $tool is missing; it needs go, GNU tar, gzip, zip and sha256sum" >&2
		exit 1
	fi
done
if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
	SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Build the binaries JOBS at a time (default: one per CPU): a cold build
# cache makes each target compile the standard library, mostly on one core.
jobs=${JOBS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}
build() {
	local goos=$1 goarch=$2 dir=$3 exe=tunnel
	[[ $goos == windows ]] && exe=tunnel.exe
	mkdir -p "$dir"
	echo "release.sh: building $(basename "$dir")" >&2
	if ! (cd "$root" && CGO_ENABLED=0 GOOS=$goos GOARCH=$goarch \
		go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "$dir/$exe" ./cmd/tunnel); then
		echo "release.sh: the build for $goos/$goarch failed" >&2
		return 1
	fi
}
running=0 failed=0
for target in $targets; do
	if ((running >= jobs)); then
		wait -n || failed=1
		running=$((running - 1))
	fi
	build "${target%/*}" "${target#*/}" "$work/tunnel_${version}_${target%/*}_${target#*/}" &
	running=$((running + 1))
done
while ((running > 0)); do
	wait -n || failed=1
	running=$((running - 1))
done
if ((failed)); then
	echo "release.sh: no archives: a build failed (see above)" >&2
	exit 1
fi

archives=()
for target in $targets; do
	goos=${target%/*} goarch=${target#*/}
	name=tunnel_${version}_${goos}_${goarch}
	dir=$work/$name
	# A laptop on any OS runs the agent; only Linux runs the relay as a
	# systemd service.
	cp "$root/README.md" "$root/SECURITY.md" "$root/docs/deploy.md" "$root/deploy/tunnels.example.yaml" "$dir/"
	if [[ $goos == linux ]]; then
		mkdir -p "$dir/systemd"
		cp "$root"/deploy/systemd/*.service "$dir/systemd/"
		cp "$root/deploy/relay.example.yaml" "$dir/"
	fi
	# Same bytes for the same sources: fixed times, owners and order.
	find "$dir" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	if [[ $goos == windows ]]; then
		archive=$name.zip
		rm -f "$out/$archive"
		(cd "$work" && find "$name" -print | LC_ALL=C sort | TZ=UTC zip -q -X -@ "$out/$archive")
	else
		archive=$name.tar.gz
		tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner \
			--mtime="@$SOURCE_DATE_EPOCH" -cf - "$name" | gzip -9n >"$out/$archive"
	fi
	archives+=("$archive")
done

(cd "$out" && sha256sum "${archives[@]}" >SHA256SUMS)
echo "release.sh: ${#archives[@]} archives and SHA256SUMS in $out" >&2
