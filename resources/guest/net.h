/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: virtio-net constants (virtio 1.2, 5.1) and Ethernet
 * and ARP offsets shared by the net driver (net.S) and its scenarios
 * (net_scen.S, net_bench.S).
 */
#ifndef HEARTH_NET_H
#define HEARTH_NET_H

/* Feature bits (5.1.3). */
#define VIRTIO_NET_F_MTU		3
#define VIRTIO_NET_F_MAC		5

/* Config space (5.1.4), offsets into it. */
#define NET_CFG_MAC			0
#define NET_CFG_MTU			10

/* struct virtio_net_hdr with VERSION_1: 12 bytes, num_buffers included. */
#define NET_HDR_SIZE			12
#define NET_RXQ				0
#define NET_TXQ				1
#define NET_BUF_MIN			2048	/* bytes per rx/tx buffer, at least */
#define NET_BUF_MAX			65536
#define NET_WAIT_MS			5000
#define NET_BAD_ID			-3	/* the device named no rx buffer */

/* Ethernet and ARP. */
#define ETH_ALEN			6
#define ETH_HLEN			14
#define ETH_ZLEN			60	/* shortest frame without FCS */
#define ETH_DEST			0
#define ETH_SOURCE			6
#define ETH_PROTO			12
#define ETH_P_ARP			0x0806
#define ETH_P_IP			0x0800
#define ETH_P_HEARTH			0x88b5	/* IEEE local experimental */
#define ARP_HTYPE			(ETH_HLEN + 0)
#define ARP_PTYPE			(ETH_HLEN + 2)
#define ARP_HLEN			(ETH_HLEN + 4)
#define ARP_PLEN			(ETH_HLEN + 5)
#define ARP_OPER			(ETH_HLEN + 6)
#define ARP_SHA				(ETH_HLEN + 8)
#define ARP_SPA				(ETH_HLEN + 14)
#define ARP_THA				(ETH_HLEN + 18)
#define ARP_TPA				(ETH_HLEN + 24)
#define ARP_FRAME_LEN			(ETH_HLEN + 28)

#endif /* HEARTH_NET_H */
