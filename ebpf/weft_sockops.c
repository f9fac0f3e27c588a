/* weft_sockops.c: capture bookkeeping. Key a captured connection's original destination by its
 * 4-tuple once it is established, and forget it when the connection closes; and enter the
 * workload ends of agent-relayed connections into the sk_msg splice sockhash (weft_maps.h).
 *
 * weft_connect4 can key only by socket cookie: at connect() time the source port is not chosen
 * yet. The agent sees the connection from the other end (accept() gives it the peer address),
 * so it looks the original destination up by 4-tuple, which exists from ACTIVE_ESTABLISHED on.
 */
#include <uapi/linux/bpf.h>
#include <linux/socket.h>

#include "weft_maps.h"

#define WEFT_SOCKOPS_DONE 1 /* sockops programs return 1; the value is not a verdict */

static __always_inline void weft_own_tuple(struct bpf_sock_ops *skops, struct weft_tuple *tuple)
{
	tuple->src_addr = skops->local_ip4;
	tuple->dst_addr = skops->remote_ip4;
	tuple->src_port = bpf_htons(skops->local_port); /* local_port is host order */
	tuple->dst_port = skops->remote_port >> 16;     /* network order, in the upper half */
}

/* A workload socket whose far end is a node agent that splices by sk_msg: give it fresh
 * counters, no pair (a reused 4-tuple must not inherit a dead connection's), and put it in the
 * sockhash, so that its sends run weft_splice_msg from the first byte on. */
static __always_inline void weft_msg_enter(struct bpf_sock_ops *skops, struct weft_tuple *tuple)
{
	__be32 remote = skops->remote_ip4;
	__u8 *agent = weft_msg_agent.lookup(&remote);
	if (!agent)
		return;
	struct weft_msg_state fresh = {};
	weft_msg_pr.delete(tuple);
	weft_msg_st.update(tuple, &fresh);
	weft_msg_sk.sock_hash_update(skops, tuple, BPF_ANY);
}

static __always_inline void weft_key_by_tuple(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct weft_orig *orig = weft_orig_ck.lookup(&cookie);
	if (!orig)
		return; /* not a captured connection */

	struct weft_tuple tuple = {};
	weft_own_tuple(skops, &tuple);
	struct weft_orig copy = *orig;
	weft_orig_tp.update(&tuple, &copy);
	/* Ask for state callbacks so the close below can remove both entries. */
	bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
	weft_msg_enter(skops, &tuple);
}

static __always_inline void weft_forget(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct weft_tuple tuple = {
		.src_addr = skops->local_ip4,
		.dst_addr = skops->remote_ip4,
		.src_port = bpf_htons(skops->local_port),
		.dst_port = skops->remote_port >> 16,
	};
	weft_orig_tp.delete(&tuple);
	weft_orig_ck.delete(&cookie);
}

int weft_sockops(struct bpf_sock_ops *skops)
{
	/* AF_INET6 too: an IPv6 socket connected to a v4-mapped address (cgroup/connect6 captured
	 * it) is IPv4 on the wire, and local_ip4/remote_ip4 hold its IPv4 addresses. Native IPv6
	 * connections are never in weft_orig_ck, so the lookups below leave them alone. */
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return WEFT_SOCKOPS_DONE;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		weft_key_by_tuple(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		/* A workload accepting a connection: from its agent, it may become a spliced S. */
		struct weft_tuple tuple = {};
		weft_own_tuple(skops, &tuple);
		weft_msg_enter(skops, &tuple);
		break;
	}
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			weft_forget(skops);
		break;
	}
	return WEFT_SOCKOPS_DONE;
}
