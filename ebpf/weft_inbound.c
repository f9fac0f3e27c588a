/* weft_inbound.c: STRICT inbound. A workload whose PeerAuthentication is STRICT accepts new TCP
 * connections only from its node agent; every other connection attempt is dropped and counted.
 *
 * Only packets for listening sockets are judged: connections the workload opened itself (its
 * replies) and connections that existed before STRICT was set are left alone.
 */
#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/stddef.h>
#include <linux/socket.h>

#include "weft_maps.h"

#define WEFT_SKB_DROP 0
#define WEFT_SKB_PASS 1

int weft_inbound(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return WEFT_SKB_PASS;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return WEFT_SKB_PASS;
	if (sk->family != AF_INET || sk->protocol != IPPROTO_TCP || sk->state != BPF_TCP_LISTEN)
		return WEFT_SKB_PASS;

	__u64 cgroup_id = bpf_sk_cgroup_id(sk);
	struct weft_enrollment *enrollment = weft_enroll.lookup(&cgroup_id);
	if (!enrollment || enrollment->inbound != WEFT_INBOUND_STRICT)
		return WEFT_SKB_PASS;

	/* The source address comes from the IP header: skb->remote_ip4 here is the socket's peer,
	 * which a listening socket does not have. cgroup_skb sees the packet from its IP header on. */
	__be32 src = 0;
	if (bpf_skb_load_bytes(skb, offsetof(struct iphdr, saddr), &src, sizeof(src)) < 0)
		return WEFT_SKB_DROP; /* fail closed: a STRICT workload's packet we cannot judge */
	/* The agent delivers inbound traffic from its own address; loopback never left the pod. */
	if (src == enrollment->agent_addr || (bpf_ntohl(src) >> 24) == 127)
		return WEFT_SKB_PASS;

	struct weft_wl_stats *stats = weft_wl_stats.lookup(&cgroup_id);
	if (stats)
		__sync_fetch_and_add(&stats->inbound_dropped, 1);
	return WEFT_SKB_DROP;
}
