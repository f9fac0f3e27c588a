/* weft_splice.c: same-node splice. Bytes arriving on one agent socket of a relayed connection go
 * straight out of its peer socket, without a trip through the agent's user space.
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
