# Sourced by scripts/uki-inputs and scripts/guest-layer: Debian packages as build inputs, fetched
# with `apt-get download` and unpacked with dpkg-deb, never installed. Callers define log and die.

# Prints the kernel package that Debian's linux-image-amd64 depends on. A fresh machine's apt has
# no package lists yet; as root, they are fetched once (apt-get update) before giving up.
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

# deb_download PACKAGE DEBS: downloads the newest version of PACKAGE that apt's sources offer
# into the folder DEBS, unless that version is there already; prints the .deb's path. (Not apt's
# candidate: when the machine has a newer version installed than its package lists know of, the
# candidate is that installed version, which no source serves.) When the download fails, as with
# package lists older than the archive, root fetches the lists once (apt-get update) and retries.
deb_download() {
    local pkg="$1" debs="$2" version deb
    version="$(deb_available "$pkg")"
    deb="$(ls "$debs/${pkg}_"*.deb 2>/dev/null | head -n 1 || true)"
    if [ -n "$deb" ] && [ "$(dpkg-deb -f "$deb" Version)" = "$version" ]; then
        printf '%s\n' "$deb"
        return
    fi
    rm -f "$debs/${pkg}_"*.deb
    log "apt-get download $pkg ($version)"
    # _apt cannot write here when the folder is root's; the download is then unsandboxed, as apt says.
    if ! (cd "$debs" && apt-get download -q "$pkg=$version" >&2); then
        [ "$(id -u)" = 0 ] || die "apt-get download $pkg=$version failed; run apt-get update and try again"
        log "apt-get update (the package lists may be older than the archive)"
        apt-get update -q >&2 || die "apt-get update failed; $pkg cannot be downloaded"
        version="$(deb_available "$pkg")"
        log "apt-get download $pkg ($version)"
        (cd "$debs" && apt-get download -q "$pkg=$version" >&2) || die "apt-get download $pkg=$version failed"
    fi
    deb="$(ls "$debs/${pkg}_"*.deb | head -n 1)"
    printf '%s\n' "$deb"
}

# deb_available PACKAGE: the newest version of PACKAGE that apt's sources offer.
deb_available() {
    local version
    version="$(apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort_versions | head -n 1)"
    [ -n "$version" ] || die "no apt source offers $1; run apt-get update"
    printf '%s' "$version"
}

# sort_versions: Debian version strings on stdin, newest first (dpkg's ordering).
sort_versions() {
    local -a versions
    mapfile -t versions
    local i j v
    for ((i = 1; i < ${#versions[@]}; i++)); do
        v="${versions[i]}"
        j=$((i - 1))
        while [ "$j" -ge 0 ] && dpkg --compare-versions "$v" gt "${versions[j]}"; do
            versions[j + 1]="${versions[j]}"
            j=$((j - 1))
        done
        versions[j + 1]="$v"
    done
    [ "${#versions[@]}" -eq 0 ] || printf '%s\n' "${versions[@]}"
}

# deb_extract DEB DEST: unpacks the whole package DEB into DEST, once per .deb.
deb_extract() {
    local stamp="$2/.$(basename "$1").done"
    [ -f "$stamp" ] && return
    dpkg -x "$1" "$2"
    touch "$stamp"
}

# kernel_extract DEB DEST: unpacks from the kernel package DEB only the kernel image and
# modules.builtin, and lists the package's files in DEST/.DEB.files. The modules, about 400 MB
# unpacked, come through kernel_modules, only those asked for.
kernel_extract() {
    local list="$2/.$(basename "$1").files"
    [ -f "$list" ] && return
    dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards './boot/vmlinuz-*' './lib/modules/*/modules.builtin'
    dpkg-deb --fsys-tarfile "$1" | tar -t >"$list.tmp"
    mv -f "$list.tmp" "$list"
}

# kernel_module DEST DEB KVER NAME: prints the package member (./lib/modules/KVER/kernel/...ko)
# of module NAME, - and _ alike; nothing when the package has no such module (a built-in one).
kernel_module() {
    grep -E "^\./lib/modules/$3/kernel/(.*/)?${4//[-_]/[-_]}\.ko$" "$1/.$(basename "$2").files" | head -n 1 || true
}

# module_depends FILE: the modules a kernel module depends on, from its .modinfo. (Not objcopy to
# /dev/stdout: run as root with stdout a file, objcopy replaces the /dev/stdout symlink itself.)
module_depends() {
    readelf -p .modinfo "$1" | sed -n 's/^ *\[ *[0-9a-f]*\] *depends=//p' | tr ',' ' '
}

# kernel_modules DEB DEST KVER NAME...: unpacks modules NAME... of kernel KVER from DEB into DEST,
# with the modules they depend on, one pass over the package per level of dependencies.
kernel_modules() {
    local deb="$1" dest="$2" kver="$3" name member
    shift 3
    local -a want=("$@") members
    while [ "${#want[@]}" -gt 0 ]; do
        members=()
        for name in "${want[@]}"; do
            member="$(kernel_module "$dest" "$deb" "$kver" "$name")"
            if [ -n "$member" ] && [ ! -f "$dest/$member" ]; then members+=("$member"); fi
        done
        [ "${#members[@]}" -gt 0 ] || return 0
        mapfile -t members < <(printf '%s\n' "${members[@]}" | sort -u)
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dest" "${members[@]}"
        want=()
        for member in "${members[@]}"; do
            for name in $(module_depends "$dest/$member"); do want+=("$name"); done
        done
    done
}
