"""Builds the lab's Debian 12 Vagrant box locally (debootstrap, ext4, extlinux) and caches it.

No box can be downloaded on the CI machine and its kernel has neither partition-table support
nor device-mapper, so the usual loop + grub-install route fails. What works: the root file
system is made as a file (`mkfs.ext4 -d`), copied into an MBR disk image at 1 MiB, booted by
syslinux's MBR code and extlinux (installed through a loop device at that offset), and converted
to qcow2. The .box is cached under CACHE_DIR keyed by a hash of this recipe: a second run, or
any run after an unchanged recipe, reuses it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from vm.vagrant.steps import StepError, run

CACHE_DIR = Path("/var/cache/weft/vagrant")
BOX_NAME = "weft/debian12-local"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DISK_GIB = 4
PARTITION_OFFSET = 1 << 20  # the root partition starts at 1 MiB
SECTOR = 512
# What the guests need, baked in (guests have no network): the runtime subset of
# scripts/setup.sh (WEFT_SETUP_GUEST=1 checks exactly these are present), plus what a
# Vagrant base box needs (ssh, sudo, rsync, systemd-networkd for DHCP on eth0). netbase:
# /etc/protocols, without which `ip rule ... ipproto tcp` (the agent's HBONE rule) fails.
PACKAGES = (
    "systemd-sysv", "dbus", "udev", "kmod", "initramfs-tools", "linux-image-amd64",
    "linux-headers-amd64", "openssh-server", "sudo", "rsync", "ca-certificates",
    "python3", "python3-venv", "python3-dev", "gcc", "python3-bpfcc", "bpfcc-tools", "libbpf1",
    "iproute2", "nftables", "util-linux", "procps", "psmisc", "systemd", "curl", "openssl",
    "tcpdump", "iputils-ping", "less", "netbase",
)  # fmt: skip
# Timers that would only burn the emulated CPU (or try the network) in a lab guest.
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer",
    "fstrim.timer", "systemd-timesyncd.service",
)  # fmt: skip
INSECURE_KEY_GLOBS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
    "/usr/share/vagrant/keys/vagrant.pub",
)
# ext4 features extlinux cannot read are left out.
MKFS_FEATURES = "^64bit,^metadata_csum_seed,^orphan_file"
DEBOOTSTRAP_TIMEOUT = 1200.0
VENV = "/opt/weft/venv"  # where vm/provision/node.sh installs Weft
KERNEL_PACKAGES = ("linux-image-amd64", "linux-headers-amd64")  # from bookworm-backports
# Bump when a build step changes what ends up in the box (the data above is hashed anyway).
RECIPE_VERSION = 2


@dataclass(frozen=True)
class Box:
    name: str
    path: Path
    recipe: str


def wheels(wheelhouse: Path | None) -> list[str]:
    return sorted(p.name for p in wheelhouse.glob("*.whl")) if wheelhouse else []


def recipe_hash(wheelhouse: Path | None = None) -> str:
    """The cache key of the built box: changes with anything that goes into it."""
    recipe = [
        RECIPE_VERSION, SUITE, MIRROR, DISK_GIB, PACKAGES, MASKED_UNITS, MKFS_FEATURES,
        extlinux_conf("K", "I", "U"), fstab("U"), NETWORKD_ETH0, SUDOERS, BOX_VAGRANTFILE,
        KERNEL_PACKAGES, wheels(wheelhouse),
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]


def box_path(cache_dir: Path = CACHE_DIR, wheelhouse: Path | None = None) -> Path:
    return cache_dir / f"weft-debian12-{recipe_hash(wheelhouse)}.box"


def metadata() -> dict[str, object]:
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GIB}


def extlinux_conf(kernel: str, initrd: str, root_uuid: str) -> str:
    return (
        "DEFAULT weft\nTIMEOUT 1\nPROMPT 0\n"
        "LABEL weft\n"
        f"  KERNEL /boot/{kernel}\n"
        f"  INITRD /boot/{initrd}\n"
        f"  APPEND root=UUID={root_uuid} rw console=ttyS0 net.ifnames=0 biosdevname=0 quiet\n"
    )


def fstab(root_uuid: str) -> str:
    return f"UUID={root_uuid} / ext4 defaults,errors=remount-ro 0 1\n"


# The DHCP client id is the MAC: unique per VM whatever the machine id.
NETWORKD_ETH0 = "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n\n[DHCPv4]\nClientIdentifier=mac\n"
SUDOERS = "vagrant ALL=(ALL) NOPASSWD:ALL\nDefaults:vagrant !requiretty\n"
BOX_VAGRANTFILE = (
    "# The Weft lab's locally built Debian 12 box (vm/vagrant/box.py).\n"
    'Vagrant.configure("2") do |config|\n'
    '  config.vm.provider :libvirt do |libvirt|\n    libvirt.disk_bus = "virtio"\n  end\n'
    "end\n"
)


def insecure_key() -> str:
    for pattern in INSECURE_KEY_GLOBS:
        for candidate in sorted(Path("/").glob(pattern.lstrip("/"))):
            return candidate.read_text()
    raise StepError(
        "find Vagrant's insecure public key",
        Path("/dev/null"),
        "vagrant is not installed (run scripts/setup.sh)",
    )


def ensure_box(
    cache_dir: Path = CACHE_DIR, log: Path | None = None, wheelhouse: Path | None = None
) -> Box:
    """The cached box for this recipe, built first when absent.

    With `wheelhouse`, the box also carries VENV with those wheels installed: pip runs at
    native speed here, and for minutes in an emulated guest. The guest still installs the
    project itself (and anything missing) from the shipped wheelhouse.
    """
    key = recipe_hash(wheelhouse)
    target = box_path(cache_dir, wheelhouse)
    if target.is_file():
        return Box(BOX_NAME, target, key)
    log = log or cache_dir / f"build-{key}.log"
    build(target, log, wheelhouse)
    return Box(BOX_NAME, target, key)


def build(target: Path, log: Path, wheelhouse: Path | None = None) -> None:
    """Build the box into `target` atomically; a failure leaves nothing mounted or half-built."""
    work = target.parent / f"build-{recipe_hash(wheelhouse)}"
    _unmount(work / "mnt")  # an interrupted build's
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log.write_text(f"building {target}\n")
    try:
        _build(work, target, log, wheelhouse)
    finally:
        _unmount(work / "mnt")
        shutil.rmtree(work, ignore_errors=True)


def _build(work: Path, target: Path, log: Path, wheelhouse: Path | None) -> None:
    rootfs = work / "rootfs"
    _bootstrap(rootfs, target.parent, log)
    root_uuid = str(uuid.uuid4())
    _configure_rootfs(rootfs, root_uuid, log)
    if wheelhouse is not None:
        _bake_venv(rootfs, wheelhouse, log)
    root_image = work / "root.ext4"
    size_mib = DISK_GIB * 1024 - 1
    run(
        "make the ext4 root file system",
        ["mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid, "-O", MKFS_FEATURES,
         "-d", str(rootfs), str(root_image), f"{size_mib}M"],
        log, timeout=600,
    )  # fmt: skip
    shutil.rmtree(rootfs)
    disk = work / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(DISK_GIB << 30)
    with disk.open("r+b") as f:
        f.seek(0)
        f.write(mbr_partition_table(DISK_GIB << 30))
    run(
        "copy the root file system into the disk image",
        ["dd", f"if={root_image}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse"],
        log, timeout=600,
    )  # fmt: skip
    root_image.unlink()
    run(
        "write syslinux's MBR boot code",
        ["dd", f"if={_mbr_bin()}", f"of={disk}", "bs=440", "count=1", "conv=notrunc"],
        log, timeout=60,
    )  # fmt: skip
    mnt = work / "mnt"
    mnt.mkdir()
    run(
        "mount the root partition (loop device at 1 MiB)",
        ["mount", "-o", f"loop,offset={PARTITION_OFFSET}", str(disk), str(mnt)],
        log, timeout=60,
    )  # fmt: skip
    try:
        run(
            "install extlinux",
            ["extlinux", "--install", str(mnt / "boot" / "extlinux")],
            log, timeout=120,
        )  # fmt: skip
    finally:
        _unmount(mnt)
    image = work / "box.img"
    run(
        "convert the disk to qcow2",
        ["qemu-img", "convert", "-O", "qcow2", str(disk), str(image)],
        log, timeout=900,
    )  # fmt: skip
    disk.unlink()
    (work / "metadata.json").write_text(json.dumps(metadata()))
    (work / "Vagrantfile").write_text(BOX_VAGRANTFILE)
    partial = target.with_suffix(".box.partial")
    with tarfile.open(partial, "w") as tar:
        for name in ("metadata.json", "Vagrantfile", "box.img"):
            tar.add(work / name, arcname=name)
    partial.rename(target)
    # Older recipes' boxes are not used any more.
    for old in target.parent.glob("weft-debian12-*.box"):
        if old != target:
            old.unlink()


def bootstrap_hash() -> str:
    """The cache key of the debootstrapped tree: only what debootstrap itself is given."""
    return hashlib.sha256(json.dumps([SUITE, MIRROR, PACKAGES]).encode()).hexdigest()[:12]


def _bootstrap(rootfs: Path, cache_dir: Path, log: Path) -> None:
    """debootstrap, or unpack its cached result: the box's configuration changes more often."""
    cached = cache_dir / f"rootfs-{bootstrap_hash()}.tar"
    if cached.is_file():
        rootfs.mkdir()
        run("unpack the cached debootstrap tree",
            ["tar", "--numeric-owner", "--xattrs", "-xpf", str(cached), "-C", str(rootfs)],
            log, timeout=600)  # fmt: skip
        return
    run(
        "debootstrap Debian 12 with the guest packages",
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
         f"--cache-dir={_debs_cache(cache_dir)}", SUITE, str(rootfs), MIRROR],
        log, timeout=DEBOOTSTRAP_TIMEOUT,
    )  # fmt: skip
    partial = cached.with_suffix(".tar.partial")
    run("cache the debootstrap tree",
        ["tar", "--numeric-owner", "--xattrs", "-cf", str(partial), "-C", str(rootfs), "."],
        log, timeout=600)  # fmt: skip
    partial.rename(cached)
    for old in cache_dir.glob("rootfs-*.tar"):
        if old != cached:
            old.unlink()


def _bake_venv(rootfs: Path, wheelhouse: Path, log: Path) -> None:
    """VENV made as vm/provision/node.sh + scripts/setup.sh make it, with every wheel in it."""
    staged = rootfs / "tmp" / "weft-wheels"
    shutil.copytree(wheelhouse, staged, ignore=shutil.ignore_patterns(".*"))
    chroot = ["chroot", str(rootfs)]
    run(
        "create the guests' virtualenv",
        [*chroot, "python3", "-m", "venv", "--system-site-packages", VENV],
        log,
        timeout=300,
    )
    run("install the wheelhouse into the guests' virtualenv",
        [*chroot, f"{VENV}/bin/python", "-m", "pip", "install", "-q", "--no-index",
         "--disable-pip-version-check",
         *(f"/tmp/weft-wheels/{name}" for name in wheels(wheelhouse))],
        log, timeout=600)  # fmt: skip
    shutil.rmtree(staged)


def _install_kernel(rootfs: Path, log: Path) -> None:
    """Debian 12's backports kernel and its headers, in place of 6.1.

    The agent attaches its sockmap programs (sk_skb, sk_msg) with bpf_link, which Linux has
    only since 6.10: on 6.1 bpf_link_create(SK_SKB_VERDICT) fails with EINVAL.
    """
    sources = rootfs / "etc" / "apt" / "sources.list.d" / "backports.list"
    sources.write_text(f"deb {MIRROR} {SUITE}-backports main\n")
    resolv = rootfs / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", resolv)
    apt = ["chroot", str(rootfs), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "-y",
           "-o", "Dpkg::Use-Pty=0"]  # fmt: skip
    try:
        run("apt-get update (with backports)", [*apt, "update"], log, timeout=600)
        run("install the backports kernel and headers",
            [*apt, "install", "--no-install-recommends", "-t", f"{SUITE}-backports",
             *KERNEL_PACKAGES], log, timeout=1200)  # fmt: skip
        run("remove Debian 12's 6.1 kernel",
            ["chroot", str(rootfs), "sh", "-c",
             "apt-get -q -y purge $(dpkg-query -W -f '${Package}\\n' 'linux-*-6.1.0-*')"],
            log, timeout=600)  # fmt: skip
    finally:
        resolv.unlink(missing_ok=True)
        resolv.write_text("")


def _configure_rootfs(rootfs: Path, root_uuid: str, log: Path) -> None:
    _install_kernel(rootfs, log)
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise StepError(
            "configure the root file system", log, "no kernel or initrd in /boot after debootstrap"
        )
    if len(kernels) != 1:
        raise StepError(
            "configure the root file system", log, f"expected one kernel, found {kernels}"
        )
    (rootfs / "boot" / "extlinux").mkdir(exist_ok=True)
    (rootfs / "boot" / "extlinux" / "extlinux.conf").write_text(
        extlinux_conf(kernels[-1].name, initrds[-1].name, root_uuid)
    )
    (rootfs / "etc" / "fstab").write_text(fstab(root_uuid))
    (rootfs / "etc" / "hostname").write_text("weft-box\n")
    (rootfs / "etc" / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 weft-box\n")
    # Empty: every VM makes its own at first boot. systemd would copy D-Bus's id (made when
    # dbus was installed) instead, and three VMs with one id got one DHCP lease between them.
    (rootfs / "etc" / "machine-id").write_text("")
    dbus_id = rootfs / "var" / "lib" / "dbus" / "machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    network = rootfs / "etc" / "systemd" / "network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "10-eth0.network").write_text(NETWORKD_ETH0)
    sudoers = rootfs / "etc" / "sudoers.d" / "vagrant"
    sudoers.write_text(SUDOERS)
    sudoers.chmod(0o440)
    chroot = ["chroot", str(rootfs)]
    run("create user vagrant", [*chroot, "useradd", "-m", "-s", "/bin/bash", "vagrant"], log,
        timeout=60)  # fmt: skip
    ssh = rootfs / "home" / "vagrant" / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text(insecure_key())
    (ssh / "authorized_keys").chmod(0o600)
    run("give vagrant its home", [*chroot, "chown", "-R", "vagrant:vagrant", "/home/vagrant"],
        log, timeout=60)  # fmt: skip
    run("enable systemd-networkd and ssh",
        [*chroot, "systemctl", "enable", "systemd-networkd.service", "ssh.service"],
        log, timeout=60)  # fmt: skip
    run("mask timers", [*chroot, "systemctl", "mask", *MASKED_UNITS], log, timeout=60)
    run("clean the apt cache", [*chroot, "apt-get", "clean"], log, timeout=60)


def mbr_partition_table(disk_bytes: int) -> bytes:
    """Sector 0 of the disk: no boot code (syslinux's is written over it), one active Linux
    partition from PARTITION_OFFSET to the end, and the 0x55AA signature."""
    start = PARTITION_OFFSET // SECTOR
    sectors = disk_bytes // SECTOR - start
    # CHS fields say "use LBA" (the 1023/254/63 maximum), as partitioning tools write them.
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", start, sectors)
    return bytes(446) + entry + bytes(16 * 3) + b"\x55\xaa"


def _mbr_bin() -> Path:
    for candidate in (Path("/usr/lib/EXTLINUX/mbr.bin"), Path("/usr/lib/syslinux/mbr/mbr.bin")):
        if candidate.is_file():
            return candidate
    return Path("/usr/lib/syslinux/mbr/mbr.bin")


def _debs_cache(cache_dir: Path) -> Path:
    """Downloaded .debs, kept: a rebuild (a changed recipe) fetches only what changed."""
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    return debs


def _unmount(mnt: Path) -> None:
    if mnt.is_dir() and subprocess.run(["mountpoint", "-q", str(mnt)], check=False).returncode == 0:
        subprocess.run(["umount", str(mnt)], check=False)
