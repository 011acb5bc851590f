/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: virtio-vsock constants (virtio 1.2, 5.10) shared by
 * the vsock driver (vsock.S) and its connection logic (vsock_conn.S).
 */
#ifndef HEARTH_VSOCK_H
#define HEARTH_VSOCK_H

#define VIRTIO_VSOCK_F_STREAM		0
#define VSOCK_CFG_GUEST_CID		0

/* struct virtio_vsock_hdr (5.10.6), little-endian, packed: 44 bytes. */
#define VS_SRC_CID			0
#define VS_DST_CID			8
#define VS_SRC_PORT			16
#define VS_DST_PORT			20
#define VS_LEN				24
#define VS_TYPE				28
#define VS_OP				30
#define VS_FLAGS			32
#define VS_BUF_ALLOC			36
#define VS_FWD_CNT			40
#define VS_HDR_SIZE			44
#define VS_HDR_STRIDE			64	/* header slots in .bss */

#define VS_TYPE_STREAM			1
#define VS_OP_REQUEST			1
#define VS_OP_RESPONSE			2
#define VS_OP_RST			3
#define VS_OP_SHUTDOWN			4
#define VS_OP_RW			5
#define VS_OP_CREDIT_UPDATE		6
#define VS_OP_CREDIT_REQUEST		7
#define VS_SHUTDOWN_RCV			1
#define VS_SHUTDOWN_SEND		2
#define VS_EVENT_TRANSPORT_RESET	0

#define VS_RXQ				0
#define VS_TXQ				1
#define VS_EVQ				2
#define VS_PAYLOAD			4096	/* payload bytes per buffer */
#define VS_BUF				65536	/* our buf_alloc: the receive buffer */
#define VS_MAX_BUFS			(VQ_SIZE_MAX / 2)
#define VS_EVENTS			8
#define VS_HOST_CID			2
#define VS_WAIT_MS			5000
#define VS_BAD_PACKET			-1	/* vs_rx_poll: the packet is malformed */

#endif /* HEARTH_VSOCK_H */
