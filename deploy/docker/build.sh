#!/bin/sh
# Builds a static karuta binary on the host and the FROM-scratch image
# karuta:dev (or $IMAGE) from it. Run from anywhere inside the repository.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
image=${IMAGE:-karuta:dev}
version=${VERSION:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)}

if ! command -v docker >/dev/null 2>&1; then
	echo "build.sh: docker is not installed or not on PATH; it is needed to build $image" >&2
	exit 1
fi
if ! docker info >/dev/null 2>&1; then
	echo "build.sh: docker is installed but the engine does not answer (is it running, may this user use it?)" >&2
	exit 1
fi

echo "build.sh: building static binary $here/karuta ($version)"
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$here/karuta" ./cmd/karuta)

echo "build.sh: building image $image"
docker build -t "$image" "$here"
echo "build.sh: done: $image"
