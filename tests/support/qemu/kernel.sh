#!/usr/bin/env bash
# The stock Debian kernel whose headers are installed (6.1 on Debian 12), unpacked
# under .cache/kernel/<abi>/ for booting under qemu (tests/support/qemu/vm.py): a second
# kernel with kprobes and lockdown, for tests that must not touch the host's.
# Idempotent: does nothing when the image is already there. Prints its path.
# Nothing outside .cache/ changes: vng links the guest's /lib/modules/<abi> to
# the unpacked modules, whose build/ and source/ links point at the headers.
set -euo pipefail
cd "$(dirname "$0")/../../.."
arch=$(dpkg --print-architecture)

build=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -1)
if [ -z "$build" ]; then
  echo "kernel.sh: no kernel headers under /usr/src; apt-get install linux-headers-$arch" >&2
  exit 5
fi
abi=${build#/usr/src/linux-headers-}          # e.g. 6.1.0-56-amd64
dest=.cache/kernel/$abi
kimg=$dest/boot/vmlinuz-$abi
if [ -f "$kimg" ] && [ -e "$dest/lib/modules/$abi/modules.dep" ] && [ -e "$dest/lib/modules/$abi/build/Makefile" ]; then
  echo "$kimg"
  exit 0
fi

# The image of exactly the headers' version, so BCC in the guest compiles against matching headers.
ver=$(dpkg-query -W -f='${Version}' "linux-headers-$abi")
mkdir -p .cache/kernel
tmp=$(mktemp -d .cache/kernel/.fetch.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt-get download runs as _apt where it can
echo "kernel.sh: downloading linux-image-$abi=$ver" >&2
if ! (cd "$tmp" && apt-get download -qq "linux-image-$abi=$ver" 2>/dev/null); then
  apt-get update -qq
  (cd "$tmp" && apt-get download -qq "linux-image-$abi=$ver") || {
    echo "kernel.sh: cannot download linux-image-$abi=$ver (the headers' version); upgrade linux-headers-$arch and rerun" >&2
    exit 5
  }
fi
dpkg -x "$tmp"/linux-image-*.deb "$tmp/root"
# The .deb ships no modules.dep (its postinst makes it): vng's initramfs needs it.
depmod -b "$tmp/root" "$abi"
ln -sfn "$build" "$tmp/root/lib/modules/$abi/build"
common=${build%-"$arch"}-common
[ -d "$common" ] && ln -sfn "$common" "$tmp/root/lib/modules/$abi/source"
rm -rf "$dest"
mv "$tmp/root" "$dest"
# Images for headers no longer installed are dead weight (~400 MB each).
for d in .cache/kernel/*/; do
  [ "${d%/}" = "$dest" ] || rm -rf "$d"
done
echo "$kimg"
