#!/usr/bin/env bash
# The Debian kernel pinned in tests/support/qemu/guest_kernel (6.1 on Debian 12), unpacked
# under .cache/kernel/<abi>/ for booting under qemu (tests/support/qemu/vm.py): a second
# kernel with kprobes and lockdown, for tests that must not touch the host's.
# Its headers, at the same package version, are installed under /usr/src if
# missing (the guest sees the host's /usr/src; BCC there compiles against them).
# Idempotent: does nothing when the image is already there. Prints its path.
# Nothing else outside .cache/ changes: vng links the guest's /lib/modules/<abi>
# to the unpacked modules, whose build/ and source/ links point at the headers.
set -euo pipefail
cd "$(dirname "$0")/../../.."
read -r abi ver < <(grep -v '^#' tests/support/qemu/guest_kernel)
arch=${abi##*-}
build=/usr/src/linux-headers-$abi
have=$(dpkg-query -W -f='${Version}' "linux-headers-$abi" 2>/dev/null || true)
if [ "$have" != "$ver" ] || [ ! -e "$build/Makefile" ]; then
  echo "kernel.sh: installing linux-headers-$abi=$ver (the guest kernel's headers)" >&2
  get_headers() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "linux-headers-$abi=$ver" >/dev/null; }
  get_headers 2>/dev/null || { apt-get update -qq && get_headers; } || {
    echo "kernel.sh: cannot install linux-headers-$abi=$ver, pinned in tests/support/qemu/guest_kernel;" \
         "move the pin to a version apt-cache policy linux-image-amd64 offers" >&2
    exit 5
  }
fi
dest=.cache/kernel/$abi
kimg=$dest/boot/vmlinuz-$abi
if [ -f "$kimg" ] && [ -e "$dest/lib/modules/$abi/modules.dep" ] && [ -e "$dest/lib/modules/$abi/build/Makefile" ] \
   && [ "$(cat "$dest/.version" 2>/dev/null)" = "$ver" ]; then
  echo "$kimg"
  exit 0
fi

# The image of exactly the headers' version, so BCC in the guest compiles against matching headers.
mkdir -p .cache/kernel
tmp=$(mktemp -d .cache/kernel/.fetch.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt-get download runs as _apt where it can
echo "kernel.sh: downloading linux-image-$abi=$ver" >&2
if ! (cd "$tmp" && apt-get download -qq "linux-image-$abi=$ver" 2>/dev/null); then
  apt-get update -qq
  (cd "$tmp" && apt-get download -qq "linux-image-$abi=$ver") || {
    echo "kernel.sh: cannot download linux-image-$abi=$ver, pinned in tests/support/qemu/guest_kernel;" \
         "move the pin to a version apt-cache policy linux-image-amd64 offers" >&2
    exit 5
  }
fi
dpkg -x "$tmp"/linux-image-*.deb "$tmp/root"
# The .deb ships no modules.dep (its postinst makes it): vng's initramfs needs it.
depmod -b "$tmp/root" "$abi"
ln -sfn "$build" "$tmp/root/lib/modules/$abi/build"
common=${build%-"$arch"}-common
[ -d "$common" ] && ln -sfn "$common" "$tmp/root/lib/modules/$abi/source"
echo "$ver" > "$tmp/root/.version"
rm -rf "$dest"
mv "$tmp/root" "$dest"
# Images of earlier pins are dead weight (~400 MB each).
for d in .cache/kernel/*/; do
  [ "${d%/}" = "$dest" ] || rm -rf "$d"
done
echo "$kimg"
