/* weft_connect.c: capture. An enrolled workload's outbound TCP connect() goes to its node agent.
 *
 * cgroup/connect4 rewrites the destination to the agent's outbound listener and records the
 * original destination under the socket cookie; cgroup/getpeername4 gives the workload the
 * original destination back, so the application never sees the detour.
 *
 * cgroup/connect6 and getpeername6 do the same for AF_INET6 sockets dialing an IPv4-mapped
 * address (::ffff:a.b.c.d), as grpcio does: the connection is IPv4 on the wire, so the agent's
 * IPv4 listener and lookups serve it unchanged. Native IPv6 destinations are left alone.
 */
#include <uapi/linux/bpf.h>
#include <linux/net.h>
#include <linux/in.h>

#include "weft_maps.h"

#ifndef WEFT_OUTBOUND_PORT
#error "WEFT_OUTBOUND_PORT (the agent's outbound capture port, host order) must be passed as a cflag"
#endif

static __always_inline int weft_is_loopback(__be32 addr)
{
	return (bpf_ntohl(addr) >> 24) == 127;
}

/* Capture an IPv4 destination (of an AF_INET socket, or embedded in a v4-mapped AF_INET6 one):
 * record it under the socket cookie and return the agent address to connect to instead, or 0
 * to leave the connect alone. *reject is set when the connect must fail (fail closed). */
static __always_inline __be32 weft_capture(struct bpf_sock_addr *ctx, __be32 dst_addr,
					   __be16 dst_port, int *reject)
{
	*reject = 0;
	if (ctx->type != SOCK_STREAM)
		return 0;

	__u64 cgroup_id = bpf_get_current_cgroup_id();
	struct weft_enrollment *enrollment = weft_enroll.lookup(&cgroup_id);
	if (!enrollment || enrollment->mode != WEFT_MODE_AMBIENT)
		return 0;

	__u16 dst_port_host = bpf_ntohs(dst_port);
	__be32 agent_addr = enrollment->agent_addr;

	/* Loopback stays inside the workload; and a workload talking to its agent directly (HBONE
	 * port, admin) must not be captured into the agent again, or it would loop. */
	__u8 *skip = weft_skip_port.lookup(&dst_port_host);
	int capture = !(weft_is_loopback(dst_addr) || dst_addr == agent_addr || skip);

	if (capture) {
		struct weft_orig orig = {
			.addr = dst_addr,
			.port = dst_port,
			.cgroup_id = cgroup_id,
		};
		__u64 cookie = bpf_get_socket_cookie(ctx);
		/* Fail closed: a connection whose destination the agent could not recover must
		 * neither reach the agent nor bypass it. */
		int err = weft_orig_ck.update(&cookie, &orig);
		if (err) {
			*reject = 1;
			return 0;
		}
	}

	struct weft_wl_stats *stats = weft_wl_stats.lookup(&cgroup_id);
	if (stats) {
		if (capture)
			__sync_fetch_and_add(&stats->captured, 1);
		else
			__sync_fetch_and_add(&stats->passed, 1);
	}
	return capture ? agent_addr : 0;
}

int weft_connect4(struct bpf_sock_addr *ctx)
{
	int reject;
	/* user_port: network order in the low 16 bits */
	__be32 agent_addr = weft_capture(ctx, ctx->user_ip4, (__be16)ctx->user_port, &reject);
	if (reject)
		return WEFT_SYS_REJECT;
	if (agent_addr) {
		ctx->user_ip4 = agent_addr;
		ctx->user_port = bpf_htons(WEFT_OUTBOUND_PORT);
	}
	return WEFT_SYS_PROCEED;
}

/* ::ffff:0:0/96, the IPv4-mapped IPv6 addresses; user_ip6 words are network order. */
static __always_inline int weft_is_v4_mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(0x0000ffff);
}

int weft_connect6(struct bpf_sock_addr *ctx)
{
	if (!weft_is_v4_mapped(ctx))
		return WEFT_SYS_PROCEED; /* native IPv6 is not captured */
	int reject;
	__be32 agent_addr = weft_capture(ctx, ctx->user_ip6[3], (__be16)ctx->user_port, &reject);
	if (reject)
		return WEFT_SYS_REJECT;
	if (agent_addr) {
		ctx->user_ip6[3] = agent_addr; /* stays v4-mapped: ::ffff:<agent> */
		ctx->user_port = bpf_htons(WEFT_OUTBOUND_PORT);
	}
	return WEFT_SYS_PROCEED;
}

int weft_getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct weft_orig *orig = weft_orig_ck.lookup(&cookie);
	if (orig) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = orig->addr;
		ctx->user_port = orig->port;
	}
	return WEFT_SYS_PROCEED;
}

int weft_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct weft_orig *orig = weft_orig_ck.lookup(&cookie);
	if (orig) {
		ctx->user_ip4 = orig->addr;
		ctx->user_port = orig->port;
	}
	return WEFT_SYS_PROCEED;
}
