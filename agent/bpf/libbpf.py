"""ctypes bindings to the few libbpf calls bcc 0.26 lacks: bpf_link, pins, queries, raw map access.

libbpf 1.x returns a negative errno from every call; each wrapper turns that into an OSError
that names the operation and the object, so a failure reads like a failed system call.
"""

from __future__ import annotations

import ctypes
import os
from enum import IntEnum
from functools import cache

LIBBPF_SONAME = "libbpf.so.1"

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_QUERY_EFFECTIVE = 1 << 0


class ProgType(IntEnum):
    """`enum bpf_prog_type` of <linux/bpf.h>: the program types Weft loads."""

    CGROUP_SKB = 8
    SOCK_OPS = 13
    SK_SKB = 14
    SK_MSG = 16
    CGROUP_SOCK_ADDR = 18


class AttachType(IntEnum):
    """`enum bpf_attach_type` of <linux/bpf.h>: the hooks Weft attaches to."""

    CGROUP_INET_INGRESS = 0
    CGROUP_SOCK_OPS = 3
    SK_SKB_STREAM_VERDICT = 5
    SK_MSG_VERDICT = 7
    CGROUP_INET4_CONNECT = 10
    CGROUP_INET6_CONNECT = 11
    CGROUP_INET4_GETPEERNAME = 29
    CGROUP_INET6_GETPEERNAME = 30
    SK_SKB_VERDICT = 38


class CgroupLinkInfo(ctypes.Structure):
    """struct { __u64 cgroup_id; __u32 attach_type; } cgroup; of struct bpf_link_info."""

    _fields_ = (("cgroup_id", ctypes.c_uint64), ("attach_type", ctypes.c_uint32))


class SockmapLinkInfo(ctypes.Structure):
    """struct { __u32 map_id; __u32 attach_type; } sockmap; of struct bpf_link_info."""

    _fields_ = (("map_id", ctypes.c_uint32), ("attach_type", ctypes.c_uint32))


class LinkTargetInfo(ctypes.Union):
    _fields_ = (("cgroup", CgroupLinkInfo), ("sockmap", SockmapLinkInfo))


class LinkInfo(ctypes.Structure):
    """`struct bpf_link_info` up to the cgroup and sockmap members of its union.

    struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; union { ... }; }
    The union holds a __u64, so it starts 8-byte aligned, after 4 bytes of padding.
    """

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("target", LinkTargetInfo),
    )


class ProgInfo(ctypes.Structure):
    """`struct bpf_prog_info` up to its id."""

    _fields_ = (("type", ctypes.c_uint32), ("id", ctypes.c_uint32))


class MapInfo(ctypes.Structure):
    """`struct bpf_map_info` up to its name: enough to check a pinned map's shape."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    )


@cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
    c_int, c_uint, c_void_p, c_char_p = (
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_char_p,
    )
    signatures: dict[str, list[type]] = {
        "bpf_link_create": [c_int, c_int, c_uint, c_void_p],
        "bpf_link_update": [c_int, c_int, c_void_p],
        "bpf_link_detach": [c_int],
        "bpf_obj_pin": [c_int, c_char_p],
        "bpf_obj_get": [c_char_p],
        "bpf_obj_get_info_by_fd": [c_int, c_void_p, c_void_p],
        "bpf_prog_query": [c_int, c_uint, c_uint, c_void_p, c_void_p, c_void_p],
        "bpf_map_update_elem": [c_int, c_void_p, c_void_p, ctypes.c_uint64],
        "bpf_map_lookup_elem": [c_int, c_void_p, c_void_p],
        "bpf_map_delete_elem": [c_int, c_void_p],
        "bpf_map_get_next_key": [c_int, c_void_p, c_void_p],
    }
    for name, argtypes in signatures.items():
        func = getattr(lib, name)
        func.argtypes = argtypes
        func.restype = c_int
    return lib


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def link_create(prog_fd: int, target_fd: int, attach_type: AttachType) -> int:
    """Attach a program to a cgroup or map as a bpf_link; returns the link fd."""
    ret = _lib().bpf_link_create(prog_fd, target_fd, int(attach_type), None)
    return _check(ret, f"bpf_link_create({attach_type.name})")


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Swap the program behind a link atomically: no moment without a program attached."""
    _check(_lib().bpf_link_update(link_fd, new_prog_fd, None), "bpf_link_update")


def link_detach(link_fd: int) -> None:
    """Detach now. Unlinking a pin also detaches, but later: the kernel frees the link from an
    RCU callback and a workqueue, so the program can run for a moment after the unlink."""
    _check(_lib().bpf_link_detach(link_fd), "bpf_link_detach")


def obj_pin(fd: int, path: str) -> None:
    _check(_lib().bpf_obj_pin(fd, path.encode()), f"bpf_obj_pin({path})")


def obj_get(path: str) -> int:
    """Open a pinned map, program or link; returns a new fd."""
    return _check(_lib().bpf_obj_get(path.encode()), f"bpf_obj_get({path})")


def link_info(link_fd: int) -> LinkInfo:
    info = LinkInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    ret = _lib().bpf_obj_get_info_by_fd(link_fd, ctypes.byref(info), ctypes.byref(size))
    _check(ret, "bpf_obj_get_info_by_fd(link)")
    return info


def prog_id(prog_fd: int) -> int:
    """The kernel id of a loaded program (what BPF_PROG_QUERY reports)."""
    info = ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    ret = _lib().bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size))
    _check(ret, "bpf_obj_get_info_by_fd(prog)")
    return int(info.id)


def map_info(map_fd: int) -> MapInfo:
    info = MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    ret = _lib().bpf_obj_get_info_by_fd(map_fd, ctypes.byref(info), ctypes.byref(size))
    _check(ret, "bpf_obj_get_info_by_fd(map)")
    return info


def prog_query(target_fd: int, attach_type: AttachType, *, effective: bool = False) -> list[int]:
    """Ids of the programs attached to a cgroup at one hook (`effective`: inherited ones too)."""
    ids = (ctypes.c_uint32 * 64)()
    count = ctypes.c_uint32(len(ids))
    flags = ctypes.c_uint32(0)
    ret = _lib().bpf_prog_query(
        target_fd,
        int(attach_type),
        BPF_F_QUERY_EFFECTIVE if effective else 0,
        ctypes.byref(flags),
        ids,
        ctypes.byref(count),
    )
    _check(ret, f"bpf_prog_query({attach_type.name})")
    return list(ids[: count.value])


def map_update(map_fd: int, key: ctypes._CData, value: ctypes._CData, flags: int = BPF_ANY) -> None:
    ret = _lib().bpf_map_update_elem(map_fd, ctypes.byref(key), ctypes.byref(value), flags)
    _check(ret, "bpf_map_update_elem")


def map_lookup(map_fd: int, key: ctypes._CData, value: ctypes._CData) -> bool:
    """Fill `value` from the entry at `key`; False when there is no such entry."""
    ret = _lib().bpf_map_lookup_elem(map_fd, ctypes.byref(key), ctypes.byref(value))
    if ret == -2:  # ENOENT
        return False
    _check(ret, "bpf_map_lookup_elem")
    return True


def map_delete(map_fd: int, key: ctypes._CData) -> bool:
    """Delete the entry at `key`; False when there was none."""
    ret = _lib().bpf_map_delete_elem(map_fd, ctypes.byref(key))
    if ret == -2:  # ENOENT
        return False
    _check(ret, "bpf_map_delete_elem")
    return True


def map_next_key(map_fd: int, key: ctypes._CData | None, next_key: ctypes._CData) -> bool:
    """Fill `next_key` with the key after `key` (the first key when None); False at the end."""
    ret = _lib().bpf_map_get_next_key(
        map_fd, None if key is None else ctypes.byref(key), ctypes.byref(next_key)
    )
    if ret == -2:  # ENOENT
        return False
    _check(ret, "bpf_map_get_next_key")
    return True
