/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: virtio constants (virtio 1.2, modern virtio-mmio
 * transport, split virtqueues) shared by virtio.S, virtq.S and the drivers.
 */
#ifndef HEARTH_VIRTIO_H
#define HEARTH_VIRTIO_H

/* virtio-mmio registers (4.2.2). */
#define VIRTIO_MMIO_MAGIC_VALUE		0x000
#define VIRTIO_MMIO_VERSION		0x004
#define VIRTIO_MMIO_DEVICE_ID		0x008
#define VIRTIO_MMIO_DEVICE_FEATURES	0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL	0x014
#define VIRTIO_MMIO_DRIVER_FEATURES	0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL	0x024
#define VIRTIO_MMIO_QUEUE_SEL		0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX	0x034
#define VIRTIO_MMIO_QUEUE_NUM		0x038
#define VIRTIO_MMIO_QUEUE_READY		0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY	0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS	0x060
#define VIRTIO_MMIO_INTERRUPT_ACK	0x064
#define VIRTIO_MMIO_STATUS		0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW	0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH	0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW	0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH	0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW	0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH	0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION	0x0fc
#define VIRTIO_MMIO_CONFIG		0x100

#define VIRTIO_MMIO_MAGIC		0x74726976	/* "virt" */

/* Device IDs (5). */
#define VIRTIO_ID_NET			1
#define VIRTIO_ID_BLOCK			2
#define VIRTIO_ID_BALLOON		5
#define VIRTIO_ID_VSOCK			19

/* Device status bits (2.1). */
#define VIRTIO_S_ACKNOWLEDGE		1
#define VIRTIO_S_DRIVER			2
#define VIRTIO_S_DRIVER_OK		4
#define VIRTIO_S_FEATURES_OK		8
#define VIRTIO_S_NEEDS_RESET		64
#define VIRTIO_S_FAILED			128

/* Reserved feature bits (6). */
#define VIRTIO_F_INDIRECT_DESC		28
#define VIRTIO_F_EVENT_IDX		29
#define VIRTIO_F_VERSION_1		32
#define VIRTIO_F_RING_PACKED		34
#define VIRTIO_F_NOTIFICATION_DATA	38
#define VIRTIO_F_ADMIN_VQ		41

/* vio_negotiate results (vio_put_error prints them). */
#define VIO_OK				0
#define VIO_ERR_VERSION			1
#define VIO_ERR_RESET			2
#define VIO_ERR_NO_VERSION_1		3
#define VIO_ERR_FEATURES_OK		4

/* Split virtqueues (2.7). */
#define VRING_DESC_F_NEXT		1
#define VRING_DESC_F_WRITE		2
#define VRING_DESC_F_INDIRECT		4
#define VRING_DESC_SIZE			16
#define VQ_MAX				8		/* queues per device the guest sets up */
#define VQ_SIZE_MAX			256		/* largest queue size the guest uses */
#define VQ_AREA_SIZE			0x3000		/* ring memory per queue */
#define VQ_AVAIL_OFF			0x1000		/* avail ring, from the descriptor table */
#define VQ_USED_OFF			0x2000		/* used ring */

/* vq_wait_used results besides a descriptor id. */
#define VQ_TIMEOUT			-1
#define VQ_NEEDS_RESET			-2

#endif /* HEARTH_VIRTIO_H */
