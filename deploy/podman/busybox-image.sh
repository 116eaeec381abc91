#!/bin/sh
# Builds a tiny local image from a static busybox binary, for hosts that cannot
# reach a container registry. Usage: busybox-image.sh [IMAGE] (default
# localhost/busybox:latest). Needs podman and busybox-static (/bin/busybox).
set -eu
image="${1:-localhost/busybox:latest}"
bb="${BUSYBOX:-$(command -v busybox || true)}"
if podman image exists "$image" 2>/dev/null; then
	echo "image $image already present"
	exit 0
fi
if [ -z "$bb" ] || ! file -L "$bb" 2>/dev/null | grep -q "statically linked"; then
	for c in /bin/busybox /usr/bin/busybox; do
		if [ -x "$c" ]; then bb="$c"; break; fi
	done
fi
[ -n "$bb" ] || { echo "busybox not found: install busybox-static" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/rootfs/bin" "$tmp/rootfs/tmp" "$tmp/rootfs/www"
cp "$bb" "$tmp/rootfs/bin/busybox"
for app in sh sleep echo cat httpd wget ls true false env kill ps date; do
	ln -s busybox "$tmp/rootfs/bin/$app"
done
echo "hello from tether" > "$tmp/rootfs/www/index.html"
tar -C "$tmp/rootfs" -cf "$tmp/rootfs.tar" .
podman import --change 'CMD ["/bin/sh"]' "$tmp/rootfs.tar" "$image" >/dev/null
echo "imported $image"
