/* weft_maps.h: every map and struct shared by Weft's eBPF programs and the agent, declared once.
 *
 * The agent mirrors each struct with ctypes in agent/bpf/maps.py; a kernel test compares the
 * mirrors' sizes and offsets with the layouts bcc compiled from this file. Every map is pinned
 * under WEFT_PIN_DIR, so all program files of one scope share the same maps, and an agent restart
 * finds the state (enrollment, original destinations of live connections) where it left it.
 */
#ifndef WEFT_MAPS_H
#define WEFT_MAPS_H

#ifndef WEFT_PIN_DIR
#error "WEFT_PIN_DIR (bpffs directory of this scope's maps, a C string) must be passed as a cflag"
#endif

#define WEFT_PIN(name) WEFT_PIN_DIR "/" #name

/* Program return codes of the cgroup hooks, named (the kernel's are bare 0 and 1). */
#define WEFT_SYS_REJECT 0
#define WEFT_SYS_PROCEED 1

/* weft_enrollment.mode: is this workload's traffic captured at all? */
#define WEFT_MODE_NONE 0    /* opted out (`weft.io/dataplane-mode: none`): never touched */
#define WEFT_MODE_AMBIENT 1 /* outbound TCP is captured to the node agent */

/* weft_enrollment.inbound: PeerAuthentication of the workload. */
#define WEFT_INBOUND_PERMISSIVE 0
#define WEFT_INBOUND_STRICT 1 /* new TCP connections are accepted only from the node agent */

#define WEFT_MAX_WORKLOADS 4096
#define WEFT_MAX_CONNS 65536

/* A workload, keyed by the id (inode number) of its cgroup v2 directory. */
struct weft_enrollment {
	__u16 mode;
	__u16 inbound;
	__be32 agent_addr; /* network order: the node agent's address as this workload reaches it */
};

/* Where a captured connect() was going before it was redirected to the agent. */
struct weft_orig {
	__be32 addr; /* network order */
	__be16 port; /* network order */
	__u16 reserved;
	__u64 cgroup_id; /* the workload that connected: the agent needs no IP lookup to know it */
};

/* A TCP connection as seen from the workload that opened it. Network order throughout. */
struct weft_tuple {
	__be32 src_addr;
	__be32 dst_addr;
	__be16 src_port;
	__be16 dst_port;
};

/* Per-workload counters. The agent creates a workload's entry when it enrolls it; the eBPF side
 * only looks up and adds atomically (creating entries here would put a second map-update call
 * site in the capture program, which bcc's clang compiles into an indirect call, callx, that the
 * verifier rejects). */
struct weft_wl_stats {
	__u64 captured;        /* outbound connects redirected to the agent */
	__u64 passed;          /* outbound connects left alone: loopback or an excluded port */
	__u64 inbound_dropped; /* STRICT: connection attempts not from the agent, dropped */
	__u64 spliced_bytes;   /* bytes moved socket-to-socket by the kernel (same-node splice) */
};

BPF_TABLE_PINNED("hash", __u64, struct weft_enrollment, weft_enroll, WEFT_MAX_WORKLOADS,
		 WEFT_PIN(weft_enroll));
/* Destination ports (host order) never captured, e.g. the control plane's. */
BPF_TABLE_PINNED("hash", __u16, __u8, weft_skip_port, 256, WEFT_PIN(weft_skip_port));
BPF_TABLE_PINNED("hash", __u64, struct weft_wl_stats, weft_wl_stats, WEFT_MAX_WORKLOADS,
		 WEFT_PIN(weft_wl_stats));
/* LRU: an entry whose close was never seen (agent restart) ages out instead of filling the map. */
BPF_TABLE_PINNED("lru_hash", __u64, struct weft_orig, weft_orig_ck, WEFT_MAX_CONNS,
		 WEFT_PIN(weft_orig_ck));
BPF_TABLE_PINNED("lru_hash", struct weft_tuple, struct weft_orig, weft_orig_tp, WEFT_MAX_CONNS,
		 WEFT_PIN(weft_orig_tp));

/* Same-node splice: the agent puts both sockets of a relayed connection here, keyed by socket
 * cookie, and names each one's peer in weft_splice_pr; weft_splice.c then moves the bytes. */
struct weft_splice_peer {
	__u64 peer_cookie;
	__u64 cgroup_id; /* the workload whose counters the spliced bytes go to */
	__u64 redirected; /* bytes sent on from this socket to its peer; the agent waits for the
			   * peer to have written them all before it passes an end of stream on */
};

/* bcc has no pinned form of BPF_SOCKHASH, and its sk_redirect_hash() method exists only on the
 * sockhash table type: this is BPF_SOCKHASH_COMMON of bcc's helpers.h with a pin path and the
 * value type added (a 64-bit value lets user space look a socket up: it reads its cookie). */
#define WEFT_SOCKHASH_PINNED(_name, _key_type, _leaf_type, _max_entries, _pinned) \
	struct _name##_table_t {                                          \
		_key_type key;                                            \
		_leaf_type leaf;                                          \
		int (*update)(_key_type *, _leaf_type *);                 \
		int (*delete)(_key_type *);                               \
		int (*sock_hash_update)(void *, void *, u64);             \
		int (*msg_redirect_hash)(void *, void *, u64);            \
		int (*sk_redirect_hash)(void *, void *, u64);             \
		u32 max_entries;                                          \
	};                                                                \
	__attribute__((section("maps/sockhash:" _pinned))) struct _name##_table_t _name = { \
		.max_entries = (_max_entries)                             \
	};                                                                \
	BPF_ANNOTATE_KV_PAIR(_name, _key_type, _leaf_type)

WEFT_SOCKHASH_PINNED(weft_splice, __u64, int, WEFT_MAX_CONNS, WEFT_PIN(weft_splice));
/* LRU: a pair the agent never unregistered (it crashed) ages out. */
BPF_TABLE_PINNED("lru_hash", __u64, struct weft_splice_peer, weft_splice_pr, WEFT_MAX_CONNS,
		 WEFT_PIN(weft_splice_pr));

/* Same-node splice by sk_msg (weft_splice_msg in weft_splice.c): a workload's sendmsg() goes
 * straight onto the send side of the agent's socket that faces the other workload, skipping the
 * workload's own TCP connection and the agent: one TCP hop instead of two, as without the mesh.
 * Sockets are keyed by their own 4-tuple (struct weft_tuple: local address and port first), so
 * each end of a TCP connection finds the other by swapping halves.
 *
 * Four sockets per relayed connection: the client workload's C and the server workload's S
 * (weft_sockops.c puts them in weft_msg_sk when their TCP connection is established and the far
 * end is an agent listed in weft_msg_agent), and the agent's A (accepted from C) and B
 * (connected to S), which the agent adds itself. C's sends go onto B, S's onto A.
 *
 * Order: C may send before the agent has registered the pair; those bytes go by TCP to A and
 * the agent writes them on B. C switches to direct sends only at a sendmsg() when every byte it
 * sent by TCP is in B's send queue (passed == forwarded); from then on it stays direct. S -> C
 * likewise. End of stream and resets still travel by TCP through the agent, which passes them
 * on; data sent before them is already queued ahead of them on the agent's socket.
 *
 * Why not straight into the peer's receive queue (BPF_F_INGRESS), skipping TCP altogether:
 * that queue has no flow control. The sender never waits, whatever the reader does (measured:
 * a client pushed 512 MiB into a server that read nothing for 3 s; the node's TCP memory grew by
 * as much), so one slow reader could exhaust the node's TCP memory for every socket. Through
 * the agent's socket, TCP's window and send buffer hold the sender back as without the mesh. */
WEFT_SOCKHASH_PINNED(weft_msg_sk, struct weft_tuple, __u64, WEFT_MAX_CONNS,
		     WEFT_PIN(weft_msg_sk));

/* Written by the agent only (whole values), for C and S: where the workload's sends go, and how
 * many of the bytes it sent by TCP the agent has forwarded so far. */
struct weft_msg_pair {
	struct weft_tuple peer; /* the weft_msg_sk key of the agent socket its sends go onto */
	__u32 reserved;
	__u64 cgroup_id;  /* the workload whose counters direct bytes go to */
	__u64 forwarded;  /* bytes of this socket's TCP sends the agent has written on */
};

/* Written by weft_splice_msg only (atomic adds), created by weft_sockops.c for C and S. */
struct weft_msg_state {
	__u64 passed; /* bytes sent by TCP (before the switch) */
	__u64 direct; /* bytes sent straight into the peer workload's queue */
	__u32 switched; /* 1 once the socket sends directly: it never goes back */
	__u32 reserved;
};

/* LRU: entries of connections that never got spliced age out (sockops resets a reused key). */
BPF_TABLE_PINNED("lru_hash", struct weft_tuple, struct weft_msg_pair, weft_msg_pr, WEFT_MAX_CONNS,
		 WEFT_PIN(weft_msg_pr));
BPF_TABLE_PINNED("lru_hash", struct weft_tuple, struct weft_msg_state, weft_msg_st,
		 WEFT_MAX_CONNS, WEFT_PIN(weft_msg_st));
/* Addresses (network order) of node agents that splice by sk_msg; the agent lists its own
 * address only when weft_splice_msg is attached, so without it no socket enters weft_msg_sk. */
BPF_TABLE_PINNED("hash", __be32, __u8, weft_msg_agent, 64, WEFT_PIN(weft_msg_agent));

#endif /* WEFT_MAPS_H */
