# Shared steps of scripts/build-lxc and scripts/build-vm: a cached
# debootstrap base, the appliance installed from its wheel into a venv,
# the service units, and the clean-up that keeps state and keys out.
# Source it from the repository root; it needs root.
# shellcheck shell=bash disable=SC2034 # $version is for the sourcing script

suite=bookworm
cache=${JIT_BASTION_BUILD_CACHE:-/var/cache/jit-bastion-build}
version=$(python3 -c \
    'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

# The Debian mirror this machine's apt uses, unless JIT_BASTION_MIRROR says.
read_mirror() {
    if [[ -n "${JIT_BASTION_MIRROR:-}" ]]; then
        echo "$JIT_BASTION_MIRROR"
        return
    fi
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -oE '(https?://[^ ]+/debian)/?( |$)' | head -n 1 | tr -d ' ' \
        || true
}

# Runs a command inside ROOT with its own mount and pid namespaces, so
# the /dev, /proc and /sys mounts vanish with it and no process outlives it.
in_root() {
    local root=$1
    shift
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --pid --fork --kill-child -- /bin/sh -c '
        set -e
        root=$1; shift
        mount --make-rprivate /
        mount --rbind /dev "$root/dev"
        mount -t proc proc "$root/proc"
        mount -t sysfs sysfs "$root/sys"
        exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"' sh "$root" "$@"
}

# Unpacks into ROOT a base rootfs: debootstrap with the packages listed in
# the first file, then apt with those in any further files (apt, unlike
# debootstrap, resolves virtual packages: cloud-init needs that). Made
# once and kept in $cache, keyed by the mirror and the package lists.
unpack_base() {
    local root=$1 first=$2
    shift 2
    local mirror packages key base
    mirror=$(read_mirror)
    [[ -n "$mirror" ]] || { log "no Debian mirror in apt sources; set JIT_BASTION_MIRROR"; exit 1; }
    packages=$(grep -hv '^#' "$first" | xargs | tr ' ' ',')
    key=$({ printf '%s\n' "$suite" "$mirror" "$packages"; cat "$@"; } \
        | sha256sum | cut -c1-16)
    base=$cache/base-$suite-$key.tar
    if [[ ! -f "$base" ]]; then
        log "debootstrap $suite from $mirror (cached as $base)"
        mkdir -p "$cache/debs"
        rm -rf "$base.d"
        debootstrap --variant=minbase --cache-dir="$cache/debs" \
            --include="$packages" "$suite" "$base.d" "$mirror" >&2
        if (($#)); then
            write_apt_sources "$base.d" "$mirror"
            upgrade_root "$base.d"
            install_packages "$base.d" "$@"
            in_root "$base.d" apt-get -qq clean
            rm -rf "$base.d"/var/lib/apt/lists/*
        fi
        tar --numeric-owner -C "$base.d" -cf "$base.tmp" .
        mv "$base.tmp" "$base"
        rm -rf "$base.d"
    fi
    mkdir -p "$root"
    tar --numeric-owner -C "$root" -xf "$base"
    write_apt_sources "$root" "$mirror"
}

write_apt_sources() {
    local root=$1 mirror=$2
    cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
EOF
}

# Applies the security and point-release updates published since the
# cached base was made.
upgrade_root() {
    local root=$1
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    in_root "$root" apt-get -qq update >&2
    in_root "$root" apt-get -qq -y -o Dpkg::Options::=--force-confold \
        dist-upgrade >&2
}

# Installs the packages listed in the given files with apt, which, unlike
# debootstrap, resolves virtual packages (cloud-init needs that).
install_packages() {
    local root=$1
    shift
    # shellcheck disable=SC2046 # one word per package
    in_root "$root" apt-get -qq -y --no-install-recommends install \
        $(grep -hv '^#' "$@") >&2
}

# Builds the appliance's wheel and the wheels it depends on into DIR.
build_wheelhouse() {
    local dir=$1 venv=$cache/build-venv
    [[ -x "$venv/bin/pip" ]] || python3 -m venv "$venv"
    rm -rf "$dir"
    "$venv/bin/pip" wheel -q --disable-pip-version-check -w "$dir" . >&2
}

# Installs the appliance into ROOT: venv in /opt/jit-bastion, a system
# user, the units and helper scripts; the units start on boot.
install_appliance() {
    local root=$1 wheelhouse=$2
    rm -rf "$root/tmp/wheelhouse"
    cp -r "$wheelhouse" "$root/tmp/wheelhouse"
    in_root "$root" python3 -m venv /opt/jit-bastion
    in_root "$root" /opt/jit-bastion/bin/pip install -q --no-index \
        --disable-pip-version-check --find-links /tmp/wheelhouse jit-bastion >&2
    rm -rf "$root/tmp/wheelhouse"
    ln -sf /opt/jit-bastion/bin/jit-bastion "$root/usr/local/bin/jit-bastion"
    in_root "$root" adduser --system --group --home /var/lib/jit-bastion \
        --no-create-home jit-bastion >&2
    install -d -m 0755 "$root/usr/libexec/jit-bastion"
    install -m 0755 images/systemd/libexec/* "$root/usr/libexec/jit-bastion/"
    install -m 0644 images/systemd/*.service "$root/etc/systemd/system/"
    install -m 0644 images/systemd/jit-bastion.default \
        "$root/etc/default/jit-bastion"
    # Secrets for the services (a token file) go here: root writes, the
    # services' group reads.
    in_root "$root" install -d -m 0750 -o root -g jit-bastion /etc/jit-bastion
    install -D -m 0644 images/systemd/jit-bastion.issue \
        "$root/etc/issue.d/jit-bastion.issue"
    in_root "$root" systemctl enable jit-bastion-firstboot.service \
        jit-bastion-firewall.service jit-bastion-ssh.service \
        jit-bastion-web.service >&2
}

# Removes everything that must differ per machine or that a build leaves
# behind: host keys, machine id, apt lists, logs, the build's resolver.
clean_root() {
    local root=$1
    rm -f "$root"/etc/ssh/ssh_host_*
    rm -rf "$root/var/lib/jit-bastion"
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    echo jit-bastion >"$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tjit-bastion\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
        >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"
    in_root "$root" apt-get -qq clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/tmp/* \
        "$root"/root/.cache "$root"/var/cache/debconf/*-old
    find "$root/var/log" -type f -delete
    # Documentation and translations: a third of the rootfs, and apt is
    # told to leave them out of later installs too. Copyright files stay.
    find "$root/usr/share/doc" -type f ! -name copyright -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 \
        ! -name locale.alias -exec rm -rf {} +
    install -m 0644 images/lxc/dpkg-nodoc "$root/etc/dpkg/dpkg.cfg.d/jit-bastion-nodoc"
}
