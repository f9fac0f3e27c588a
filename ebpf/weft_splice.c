/* weft_splice.c: same-node splice, two ways. weft_splice_msg (sk_msg, the fast one): a workload's
 * sendmsg() lands in the receive queue of the workload at the other end (see weft_maps.h for the
 * sockets and how byte order is kept). weft_splice_verdict (sk_skb, the fallback where sk_msg
 * cannot be attached): bytes arriving on one agent socket of a relayed connection go straight
 * out of its peer socket, without a trip through the agent's user space.
 *
 * The agent authorizes the connection first and only then registers the pair; a socket with no
 * peer entry is passed up to the agent as usual (SK_PASS), so nothing is ever redirected that
 * the agent has not decided on.
 */
#include <uapi/linux/bpf.h>

#include "weft_maps.h"

int weft_splice_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct weft_splice_peer *peer = weft_splice_pr.lookup(&cookie);
	if (!peer)
		return SK_PASS;

	__u32 len = skb->len;
	/* A segment without data is a bare FIN. Redirected, it would be "sent" as zero bytes,
	 * which the kernel's sockmap backlog takes for a broken pipe (EPIPE on the peer). Passed
	 * up, the agent reads it as end of stream and half-closes the peer itself. */
	if (len == 0)
		return SK_PASS;

	__u64 peer_cookie = peer->peer_cookie;
	__u64 cgroup_id = peer->cgroup_id;
	__sync_fetch_and_add(&peer->redirected, len);
	struct weft_wl_stats *stats = weft_wl_stats.lookup(&cgroup_id);
	if (stats)
		__sync_fetch_and_add(&stats->spliced_bytes, len);
	/* flags 0: out of the peer's send side (BPF_F_INGRESS would queue it for reading). */
	return weft_splice.sk_redirect_hash(skb, &peer_cookie, 0);
}

int weft_splice_msg(struct sk_msg_md *msg)
{
	struct weft_tuple self = {
		.src_addr = msg->local_ip4,
		.dst_addr = msg->remote_ip4,
		.src_port = bpf_htons(msg->local_port), /* host order */
		.dst_port = msg->remote_port >> 16,     /* network order, in the upper half */
	};
	__u32 size = msg->size;
	struct weft_msg_state *state = weft_msg_st.lookup(&self);
	struct weft_msg_pair *pair = weft_msg_pr.lookup(&self);
	if (!pair) {
		/* Not registered (yet): TCP to the agent, counted so the switch can wait for it. */
		if (state)
			__sync_fetch_and_add(&state->passed, size);
		return SK_PASS;
	}
	if (state) {
		/* A workload socket. This runs under its socket lock, so no other send of the same
		 * socket can slip between the check and the switch. */
		if (!state->switched) {
			if (state->passed != pair->forwarded) {
				__sync_fetch_and_add(&state->passed, size);
				return SK_PASS; /* earlier bytes are still on their way through the agent */
			}
			state->switched = 1;
		}
		__sync_fetch_and_add(&state->direct, size);
		__u64 cgroup_id = pair->cgroup_id;
		struct weft_wl_stats *stats = weft_wl_stats.lookup(&cgroup_id);
		if (stats)
			__sync_fetch_and_add(&stats->spliced_bytes, size);
	}
	struct weft_tuple peer = pair->peer;
	int verdict = weft_msg_sk.msg_redirect_hash(msg, &peer, BPF_F_INGRESS);
	/* The peer workload's socket is gone (closed): a workload's bytes then go by TCP to the
	 * agent, which fails to deliver them and resets; an agent socket's write fails at once. */
	if (verdict != SK_PASS && state)
		return SK_PASS;
	return verdict;
}
