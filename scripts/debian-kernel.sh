# Sourced by scripts/uki-inputs and scripts/guest-layer: prints the kernel package that Debian's
# linux-image-amd64 depends on. A fresh machine's apt has no package lists yet; as root, they
# are fetched once (apt-get update) before giving up.
debian_kernel_package() {
    local pkg
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
        printf '%s\n' "apt-get update (apt knows no linux-image-amd64 yet)" >&2
        apt-get update -q >&2 || true
        pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    fi
    printf '%s' "$pkg"
}
