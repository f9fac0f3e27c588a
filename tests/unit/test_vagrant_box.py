"""The Vagrant lab's box recipe (vm/vagrant/box.py): boot sector, loader, metadata, cache key."""

from __future__ import annotations

import json
import struct
import tarfile
from pathlib import Path

import pytest

from vm.vagrant import box


def test_mbr_has_one_active_linux_partition_from_1_mib_to_the_end() -> None:
    disk = 4 << 30
    sector0 = box.mbr_partition_table(disk)
    assert len(sector0) == 512
    assert sector0[510:] == b"\x55\xaa"
    assert sector0[:446] == bytes(446), "boot code is syslinux's, written over it"
    status, _, kind, _, start, sectors = struct.unpack("<B3sB3sII", sector0[446:462])
    assert (status, kind) == (0x80, 0x83)
    assert start * 512 == box.PARTITION_OFFSET
    assert (start + sectors) * 512 == disk
    assert sector0[462:510] == bytes(48), "the other three entries are empty"


def test_extlinux_boots_the_kernel_by_root_uuid_with_classic_interface_names() -> None:
    conf = box.extlinux_conf("vmlinuz-6.1.0-50-amd64", "initrd.img-6.1.0-50-amd64", "abc-123")
    assert "KERNEL /boot/vmlinuz-6.1.0-50-amd64" in conf
    assert "INITRD /boot/initrd.img-6.1.0-50-amd64" in conf
    append = next(line for line in conf.splitlines() if "APPEND" in line)
    assert "root=UUID=abc-123" in append
    assert "net.ifnames=0" in append, "eth0/eth1, as Vagrant's Debian guest support expects"
    assert "console=ttyS0" in append
    assert box.fstab("abc-123").startswith("UUID=abc-123 / ext4 ")


def test_box_metadata_is_a_libvirt_qcow2_box_of_the_disk_size() -> None:
    assert box.metadata() == {"provider": "libvirt", "format": "qcow2", "virtual_size": 4}
    json.dumps(box.metadata())


def test_the_guest_packages_cover_what_the_guest_setup_checks() -> None:
    setup = (Path(__file__).resolve().parents[2] / "scripts" / "setup.sh").read_text()
    guest_list = setup.split("APT_PACKAGES=(", 1)[1].split(")", 1)[0].split()
    assert set(guest_list) <= set(box.PACKAGES), set(guest_list) - set(box.PACKAGES)
    for needed in ("openssh-server", "sudo", "rsync", "linux-image-amd64", "python3-bpfcc"):
        assert needed in box.PACKAGES


def test_the_cache_key_follows_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    key = box.recipe_hash()
    assert key == box.recipe_hash()
    assert box.box_path(Path("/c")) == Path(f"/c/weft-debian12-{key}.box")
    monkeypatch.setattr(box, "PACKAGES", (*box.PACKAGES, "htop"))
    assert box.recipe_hash() != key


def test_a_cached_box_is_reused_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = box.box_path(tmp_path)
    with tarfile.open(cached, "w"):
        pass

    def no_build(target: Path, log: Path) -> None:
        raise AssertionError("built although cached")

    monkeypatch.setattr(box, "build", no_build)
    assert box.ensure_box(tmp_path).path == cached


def test_the_insecure_key_comes_from_the_installed_vagrant() -> None:
    if not any(Path("/").glob(p.lstrip("/")) for p in box.INSECURE_KEY_GLOBS):
        pytest.skip("vagrant is not installed (scripts/setup.sh installs it)")
    assert box.insecure_key().startswith("ssh-")
