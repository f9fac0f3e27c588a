/* weft_splice.c: same-node splice, two ways. weft_splice_msg (sk_msg, the fast one): a workload's
 * sendmsg() goes straight onto the agent's TCP socket facing the other workload, skipping its own
 * TCP connection and the agent (see weft_maps.h for the sockets and how byte order is kept). weft_splice_verdict (sk_skb, the fallback where sk_msg
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
	/* flags 0: out of the peer's send side (BPF_F_INGRESS would queue it for reading). */
	int verdict = weft_splice.sk_redirect_hash(skb, &peer_cookie, 0);
	if (verdict != SK_PASS) {
		/* The peer is not in the sockhash (yet: the agent enters the two sockets one after
		 * the other; or no more: it closed). Dropping would lose the bytes: pass them up to
		 * the agent, which relays them, and count nothing (the agent waits for what is
		 * counted to have left the peer). */
		return SK_PASS;
	}
	__sync_fetch_and_add(&peer->redirected, len);
	struct weft_wl_stats *stats = weft_wl_stats.lookup(&cgroup_id);
	if (stats)
		__sync_fetch_and_add(&stats->spliced_bytes, len);
	return verdict;
}

int weft_splice_msg(struct sk_msg_md *msg)
{
	struct weft_tuple self = {
		.src_addr = msg->local_ip4,
		.dst_addr = msg->remote_ip4,
		.src_port = bpf_htons(msg->local_port), /* host order */
		.dst_port = msg->remote_port >> 16,     /* network order, in the upper half */
	};
	struct weft_msg_state *state = weft_msg_st.lookup(&self);
	if (!state)
		return SK_PASS; /* an agent socket: its writes go on as TCP */
	/* Counted when the verdict is given. A non-blocking sender whose target is full gets back
	 * a short write, and its retry is counted again: `passed` can only grow too big (the switch
	 * then waits longer; order never breaks), `direct` and spliced_bytes may overcount. */
	__u32 size = msg->size;
	struct weft_msg_pair *pair = weft_msg_pr.lookup(&self);
	if (!pair) {
		/* Not registered (yet): TCP to the agent, counted so the switch can wait for it. */
		__sync_fetch_and_add(&state->passed, size);
		return SK_PASS;
	}
	/* This runs under the socket's lock, so no other send of the same socket can slip
	 * between the check and the switch. */
	if (!state->switched) {
		if (state->passed != pair->forwarded) {
			__sync_fetch_and_add(&state->passed, size);
			return SK_PASS; /* earlier bytes are still on their way through the agent */
		}
		state->switched = 1;
	}
	struct weft_tuple peer = pair->peer;
	__u64 cgroup_id = pair->cgroup_id;
	/* flags 0: onto the send side of the agent's socket facing the peer workload, behind
	 * everything the agent wrote there; the peer receives it by TCP, as from the agent. */
	int verdict = weft_msg_sk.msg_redirect_hash(msg, &peer, 0);
	if (verdict != SK_PASS) {
		/* The agent's socket is gone (the pair is ending): TCP to the agent, which resets. */
		__sync_fetch_and_add(&state->passed, size);
		return SK_PASS;
	}
	__sync_fetch_and_add(&state->direct, size);
	struct weft_wl_stats *stats = weft_wl_stats.lookup(&cgroup_id);
	if (stats)
		__sync_fetch_and_add(&stats->spliced_bytes, size);
	return verdict;
}
